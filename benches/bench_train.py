"""The full VITO training step (both branches, loss, backward, LARS, EMA), in pairs/s, as the loop runs it.

    python benches/bench_train.py                          # GPU: ResNet-50, 224 px, 256 pairs; CPU: reduced
    python benches/bench_train.py --arch resnet18 --size 64 --batch 16 --steps 12 --window 4
    pytest benches/bench_train.py --benchmark-only -s      # the same, one pytest-benchmark entry per provider

Providers: ``synthetic-eager`` and ``synthetic-compiled`` (on-device random pairs from
``SyntheticPairSource``: the step alone; ``torch.compile`` of the two trunks) and ``loader``
(``PairLoader`` on ``VITO_BENCH_DATA``, a manifest or frame store, or else on generated built-in
synthetic videos, 96 px VP9, 8 classes, two batches per epoch: the step fed by the real pipeline;
96 px videos decode faster than real 256p ones, so prefer VITO_BENCH_DATA on a GPU). Each runs ``vito_fast.train.train`` itself and reads the figures the loop logs every
``window`` steps (pairs/s between two loss read-backs, and the share of that time spent waiting
for the next batch); the first window (warm-up, compilation) is dropped. Peak GPU memory is the
largest allocation of the run. Defaults: on CUDA ResNet-50 at 224 px, 256 pairs, bf16 autocast,
the ``resnet50`` preset; on a CPU the ``demo`` preset's heads with ResNet-18 at 64 px, 16 pairs.
Env: VITO_BENCH_ARCH, VITO_BENCH_SIZE, VITO_BENCH_BATCH, VITO_BENCH_STEPS, VITO_BENCH_WINDOW.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

CUDA = torch.cuda.is_available()
PROVIDERS = ["synthetic-eager", "synthetic-compiled", "loader"]
DEFAULTS = dict(
    arch=os.environ.get("VITO_BENCH_ARCH", "resnet50" if CUDA else "resnet18"),
    size=int(os.environ.get("VITO_BENCH_SIZE", 224 if CUDA else 64)),
    batch=int(os.environ.get("VITO_BENCH_BATCH", 256 if CUDA else 16)),
    steps=int(os.environ.get("VITO_BENCH_STEPS", 60 if CUDA else 12)),
    window=int(os.environ.get("VITO_BENCH_WINDOW", 20 if CUDA else 4)),
)


def measure(provider: str, arch: str, size: int, batch: int, steps: int, window: int,
            data: Optional[str] = None, extra_overrides: Sequence[str] = ()) -> Dict[str, float]:
    """Run `steps` training steps; pairs/s and data-wait share over all windows but the first.

    extra_overrides: config overrides after this bench's own (e.g. "data.backend=torch")."""
    from vito_fast.train.config import load_config
    from vito_fast.train.loop import train

    # model.width=64: the torchvision architecture at full width (the demo preset narrows it to 32)
    overrides = [f"model.arch={arch}", "model.width=64", f"data.image_size={size}", f"data.batch_size={batch}",
                 f"train.steps={steps}", f"train.log_every={window}", f"train.checkpoint_every={steps}",
                 "train.image_every=0", "train.progress=false", "optim.warmup_steps=0"]
    if provider.startswith("synthetic"):
        overrides += ["data.source=synthetic", f"data.steps_per_epoch={steps}"]
    else:
        overrides += ["data.source=loader", f"data.path={data or ''}"]
    if provider.endswith("compiled"):
        overrides.append("train.compile=true")
    overrides += list(extra_overrides)
    config = load_config("resnet50" if CUDA else "demo", overrides=overrides)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run_dir:
        if provider == "loader" and not data:
            from vito_fast.synthetic.videos import generate_dataset

            # The built-in synthetic videos (96 px VP9), enough clips for two batches per epoch.
            per_class = max(4, -(-2 * batch // 8))
            dataset = generate_dataset(Path(run_dir) / "data", num_classes=8, videos_per_class=per_class,
                                       progress=False)
            config.data.path = str(dataset.manifest_path)
        train(config, run_dir)
        with open(Path(run_dir) / "metrics.jsonl") as handle:
            windows = [r for r in map(json.loads, handle) if "pairs_per_s" in r][1:]
    if not windows:
        raise ValueError(f"bench_train: {steps} steps give no window after the first; raise --steps")
    seconds = [window / r["pairs_per_s"] * batch for r in windows]  # each window's wall time
    waited = sum(s * r["data_wait"] for s, r in zip(seconds, windows))
    return {"pairs_per_s": batch * window * len(windows) / sum(seconds),
            "data_wait": waited / sum(seconds),
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if CUDA else float("nan")}


def environment() -> str:
    import torchvision
    import triton

    device = torch.cuda.get_device_name() if CUDA else f"CPU ({os.cpu_count()} cores)"
    return (f"{device}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; Python "
            f"{platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"triton {triton.__version__}")


def table(rows: Dict[str, Dict[str, float]], eager: Optional[float]) -> List[str]:
    lines = ["| provider | pairs/s | vs eager | data wait | peak GPU GB |", "|---|---:|---:|---:|---:|"]
    for provider, row in rows.items():
        if "error" in row:
            lines.append(f"| {provider} | – | – | – | {row['error']} |")
            continue
        ratio = f"{row['pairs_per_s'] / eager:.2f}×" if eager else "–"
        peak = "–" if math.isnan(row["peak_gb"]) else f"{row['peak_gb']:.1f}"
        lines.append(f"| {provider} | {row['pairs_per_s']:.1f} | {ratio} | {100 * row['data_wait']:.1f} % | {peak} |")
    return lines


def test_train_step(benchmark, provider: str) -> None:  # pragma: no cover - a benchmark
    result = benchmark.pedantic(measure, args=(provider,), kwargs=DEFAULTS, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n{provider}: {result}")


def pytest_generate_tests(metafunc):  # one benchmark per provider
    if "provider" in metafunc.fixturenames:
        metafunc.parametrize("provider", PROVIDERS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=DEFAULTS["arch"])
    parser.add_argument("--size", type=int, default=DEFAULTS["size"])
    parser.add_argument("--batch", type=int, default=DEFAULTS["batch"])
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--window", type=int, default=DEFAULTS["window"])
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--data", default=os.environ.get("VITO_BENCH_DATA"), help="manifest or frame store")
    args = parser.parse_args()
    rows: Dict[str, Dict[str, float]] = {}
    for provider in args.providers.split(","):
        try:
            rows[provider] = measure(provider, args.arch, args.size, args.batch, args.steps, args.window, args.data)
        except Exception as error:  # a provider that cannot run here is reported, not fatal
            rows[provider] = {"error": f"{type(error).__name__}: {str(error)[:120]}"}
        print(provider, rows[provider], flush=True)
    eager = rows.get("synthetic-eager", {}).get("pairs_per_s")
    print(f"\n{args.arch}, {args.size} px, {args.batch} pairs/step, {args.steps} steps "
          f"(first {args.window} dropped); {environment()}\n")
    print("\n".join(table(rows, eager)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
