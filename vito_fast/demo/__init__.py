"""The built-in demo: generate the synthetic videos, pretrain VITO and its ablations, evaluate, report.

    run_demo(DemoSettings(out_dir="vito-demo"))   # what `vito-fast demo` runs (15 minutes a seed)

Variants (each pretrained for the same number of steps, from the same initialisation):

- ``random``   the untrained model (a step-0 checkpoint): the floor every method must clear;
- ``vito``     the demo preset: frame pairs Δt apart (uniform in the configured range), attention pools;
- ``avgpool``  the same with average pooling instead of attention (``model.pooling=average``);
- ``dt0``      the same with Δt = 0: both views from one frame (image-level BYOL-style augmentation).

One file per step:

- ``settings``  ``DemoSettings``, the variants and the schedule: a fixed ``DEFAULT_STEPS`` per variant, so
  the claims do not depend on the machine's speed, cut (and the report says so) only when a timed step
  says the runs would overrun the time budget;
- ``data``      what every run is scored on (probe frames, clips, corrupted and cue-conflict frames);
- ``evaluate``  one run's scores, frozen features: kNN and linear-probe top-1 on frames, cross-validated
  over folds of whole videos, on average- and attention-pooled features; robustness (mCE under
  5 corruptions × 5 severities, against random init); shape bias on cue-conflict twins;
  label-propagation J; the share of the attention on the objects. Every score is kept per video;
- ``results``   the typed results (``VariantResult``, ``DemoSummary``; ``to_json()`` is results.json);
- ``metrics``   metrics of the per-video counts and the paired bootstrap over videos;
- ``claims``    the paper's claims and their ``Verdict``: a paired bootstrap over videos, or with
  ``seeds`` > 1 the standard error across seeds;
- ``plots``, ``report``  the PNGs, results.json and report.md, rendered from the typed results;
- ``run``       ``run_demo``, which runs the steps in order.
"""
from vito_fast.demo.claims import Verdict
from vito_fast.demo.results import DemoSummary, VariantResult
from vito_fast.demo.run import run_demo
from vito_fast.demo.settings import DEFAULT_STEPS, VARIANTS, DemoSettings, choose_steps

__all__ = ["DEFAULT_STEPS", "VARIANTS", "DemoSettings", "DemoSummary", "VariantResult", "Verdict", "choose_steps",
           "run_demo"]
