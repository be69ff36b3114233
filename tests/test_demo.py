"""`vito-fast demo --minutes 1` at a tiny size runs end to end and writes its report."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from vito_fast.cli.main import main


@pytest.mark.usefixtures("pyav")
def test_demo_runs_end_to_end_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--minutes", "1", "--videos-per-class", "2", "--num-frames", "8",
                 "--eval-videos", "1", "--quiet", "data.batch_size=4", "data.image_size=32"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    vit_rows = {"random_vit", "vit"} if importlib.util.find_spec("timm") else set()  # timm's tiny ViT, issue 28
    assert set(results["variants"]) == {"random", "vito", "dt0", "avgpool"} | vit_rows
    assert results["variants"]["random"]["steps"] == 0  # the untrained model
    if vit_rows:
        assert results["variants"]["vit"]["steps"] == results["steps"] and results["variants"]["random_vit"]["steps"] == 0
        assert set(results["variants"]["vit"]["attention_iou"]) == {"block3", "block4"}
        assert "VITO on a ViT beats its random init (kNN)" in (out / "report.md").read_text()
    for name in ("vito", "dt0"):
        variant = results["variants"][name]
        assert variant["steps"] == results["steps"] >= 3 and len(results["losses"][name]) == variant["steps"]
        assert 0.0 <= variant["knn"] <= 1.0 and 0.0 <= variant["propagation_J"] <= 1.0
        assert set(variant["attention_iou"]) == {"layer3", "layer4"}
    assert results["variants"]["avgpool"]["steps"] == results["steps"]
    assert results["variants"]["avgpool"]["attention_iou"] == {}  # average pooling has no attention to score
    # results.json keeps the keys readers know: absent where not measured (no attention pool, no training)
    assert "knn_attention" in results["variants"]["vito"] and "knn_attention" not in results["variants"]["avgpool"]
    assert "train_seconds" not in results["variants"]["random"] and results["variants"]["random"]["final_loss"] is None
    assert set(results["variants"]["vito"]["per_video"]) >= {"frames", "knn_correct", "robust_corrupted_correct",
                                                             "shape_decisions"}
    report = (out / "report.md").read_text()
    assert "| VITO |" in report and "| random init |" in report and "Does it show the paper's claims?" in report
    for picture in ("loss_curves.png", "evaluations.png", "attention_vito.png"):
        assert f"({picture})" in report
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert "report:" in capsys.readouterr().out


def test_a_claim_counts_only_beyond_twice_its_standard_error():
    from vito_fast.demo import Verdict

    assert Verdict.of(0.10, 0.04) is Verdict.SHOWN
    assert Verdict.of(0.07, 0.04) is Verdict.NOT_CLEARLY
    assert Verdict.of(-0.07, 0.04) is Verdict.NOT_CLEARLY
    assert Verdict.of(-0.10, 0.04) is Verdict.OPPOSITE
    assert Verdict.of(0.10, float("nan")) is Verdict.NOT_CLEARLY  # no error, no verdict either way


def test_cross_validated_accuracy_tests_every_clip_and_reports_its_noise():
    import torch

    from vito_fast.demo.evaluate import cross_validated_accuracy

    groups = np.repeat(np.arange(12), 4)
    labels = groups % 3
    separable = torch.nn.functional.one_hot(torch.from_numpy(labels), 3).float() + 0.01 * torch.randn(48, 3)
    for probe in ("knn", "linear"):
        accuracy, error = cross_validated_accuracy(separable, labels, groups, probe)
        assert accuracy == 1.0 and error == 0.0
    noise = torch.randn(48, 8, generator=torch.Generator().manual_seed(0))
    accuracy, error = cross_validated_accuracy(noise, labels, groups, "knn")
    assert 0.0 <= accuracy <= 0.7 and error > 0.02  # near chance (1/3), and clips disagree


def _run(correct, frames, **counts):
    """A run result holding only per-video counts (what the claim metrics read); the totals are zeros."""
    from vito_fast.demo.results import ClipScores, PerVideoCounts, VariantResult

    listed = {key: np.asarray(value, np.float64).tolist() for key, value in counts.items()}
    per_video = PerVideoCounts(frames=list(map(float, frames)),
                               correct={"knn": list(map(float, correct)), "linear": list(map(float, correct))},
                               **listed)
    return VariantResult(knn=0.0, knn_se=0.0, linear=0.0, linear_se=0.0, propagation_J=0.0, propagation_J_se=0.0,
                         per_video=per_video, per_clip=ClipScores(J=[0.0] * len(frames)))


def _summary(seeds, **fields):
    """A ``DemoSummary`` of ``seeds`` ({variant: [one result per seed]}); the rest neutral unless given."""
    from vito_fast.demo import DemoSettings, DemoSummary
    from vito_fast.demo.results import ClipScores, GaussianAttention

    values = dict(settings=DemoSettings(), steps=0, estimated_seconds_per_step=0.0, budget_note=None,
                  config_overrides=[], seeds=seeds, num_classes=4,
                  gaussian_attention=GaussianAttention(ClipScores()), centred_gaussian_attention_iou=0.0,
                  centred_gaussian_attention_mass=0.0, object_area_fraction=0.0, losses={}, seconds=0.0)
    values.update(fields)
    return DemoSummary(**values)


def test_paired_bootstrap_gives_no_error_to_identical_runs_and_the_spread_of_a_real_difference():
    from vito_fast.demo.metrics import accuracy_metric, paired_bootstrap

    rng = np.random.default_rng(0)
    frames = np.full(60, 8.0)
    first = rng.integers(0, 7, size=60).astype(float)
    run = _run(first, frames)
    a, b, error = paired_bootstrap(accuracy_metric("knn"), run, accuracy_metric("knn"), run, 60)
    assert a == b == first.sum() / frames.sum() and error == 0.0
    # the other run gets 2 more frames right on every video: a constant shift, no spread
    shifted = _run(first + 2, frames)
    _, _, error = paired_bootstrap(accuracy_metric("knn"), shifted, accuracy_metric("knn"), run, 60)
    assert error < 1e-9
    # independent per-video noise: the paired error is about the standard error of the per-video differences
    other = _run(rng.integers(0, 9, size=60).astype(float), frames)
    a, b, error = paired_bootstrap(accuracy_metric("knn"), other, accuracy_metric("knn"), run, 60, draws=4000)
    per_video = (np.asarray(other.per_video.correct["knn"]) - first) / 8
    expected = per_video.std(ddof=1) / np.sqrt(60)
    assert abs(error - expected) < 0.15 * expected


def test_corruption_error_is_relative_to_the_baseline_and_a_model_at_chance_cannot_win_it():
    from vito_fast.demo.metrics import mean_corruption_error, point, robustness_figures, shape_bias_metric
    from vito_fast.demo.results import RobustnessResult

    videos, severities = 40, 5
    frames = np.full(videos, 2.0)

    def robust(clean, corrupted):  # share right, clean and under each of 5 corruptions (all severities)
        return _run(np.zeros(videos), frames, robust_frames=frames,
                    robust_clean_correct=np.full(videos, 2.0 * clean),
                    robust_corrupted_correct=np.tile(2.0 * severities * np.asarray(corrupted), (videos, 1)))

    chance = robust(0.25, [0.25] * 5)
    assert point(mean_corruption_error(chance), chance, videos) == 1.0
    good = robust(0.6, [0.4, 0.5, 0.55, 0.3, 0.35])
    expected = np.mean([(1 - c) / 0.75 for c in (0.4, 0.5, 0.55, 0.3, 0.35)])
    assert abs(point(mean_corruption_error(chance), good, videos) - expected) < 1e-12
    # at chance a model "loses nothing": its retained share is undefined, its mCE stays ~1
    chance.robustness = RobustnessResult(clean=0.25, by_corruption={}, corrupted=0.25)
    good.robustness = RobustnessResult(clean=0.6, by_corruption={}, corrupted=0.42)
    figures = robustness_figures(good, chance, num_classes=4)
    assert abs(figures.retained - (0.42 - 0.25) / (0.6 - 0.25)) < 1e-12 and abs(figures.mce - expected) < 1e-12
    assert figures.shape_bias is None and figures.cued is None  # no cue-conflict twins were scored
    assert robustness_figures(chance, chance, num_classes=4).retained is None
    shapes = _run(np.zeros(2), np.ones(2), shape_decisions=[3.0, 1.0], texture_decisions=[1.0, 1.0])
    assert point(shape_bias_metric, shapes, 2) == 4 / 6


def test_claims_take_their_error_across_seeds_when_there_are_several():
    from vito_fast.demo import Verdict
    from vito_fast.demo.claims import judge

    frames = np.full(30, 4.0)

    def seed_runs(vito_right):
        return {"vito": _run(np.full(30, vito_right), frames), "random": _run(np.full(30, 1.0), frames),
                "dt0": _run(np.full(30, 1.0), frames), "avgpool": _run(np.full(30, 2.0), frames)}

    runs = [seed_runs(value) for value in (3.0, 2.0, 4.0)]
    summary = _summary({name: [seed[name] for seed in runs] for name in runs[0]})
    judged = judge(summary, 0)  # VITO beats random init (kNN)
    differences = [(3 - 1) / 4, (2 - 1) / 4, (4 - 1) / 4]
    assert judged.seeds == 3 and abs(judged.difference - np.mean(differences)) < 1e-12
    assert abs(judged.error - np.std(differences, ddof=1) / np.sqrt(3)) < 1e-12
    assert judged.verdict is Verdict.SHOWN and judged.title == "VITO beats random init (kNN)"


def test_the_report_renders_each_verdict_and_points_to_the_runs_for_claims_it_does_not_show():
    from vito_fast.demo.claims import JudgedClaim, judge_claims
    from vito_fast.demo.report import TRIED_AT, claim_line, not_shown_line

    frames = np.full(20, 4.0)
    seeds = {"vito": [_run(np.full(20, 3.0), frames)], "random": [_run(np.full(20, 1.0), frames)],
             "dt0": [_run(np.full(20, 3.0), frames)], "avgpool": [_run(np.full(20, 4.0), frames)]}
    judged = judge_claims(_summary(seeds))
    assert [item.verdict.value for item in judged] == ["yes", "yes", "not clearly", "no, the opposite"]
    line = claim_line(judged[0])
    assert line.startswith("- VITO beats random init (kNN): yes (kNN top-1: VITO 75.0% vs random init 25.0%, ")
    assert "difference +50.0 ± 0.0 points, ± paired bootstrap over videos)" in line
    assert claim_line(judged[3]).startswith("- attention pooling beats average pooling (both average-pooled at "
                                            "evaluation): **no** (the opposite, beyond the noise) (")
    assert "**not clearly** (within twice the noise)" in claim_line(judged[2])
    note = not_shown_line(judged)
    assert judged[2].title in note and judged[3].title in note and judged[0].title not in note and TRIED_AT in note
    assert not_shown_line(judged[:2]) is None and isinstance(judged[0], JudgedClaim)


def test_the_schedule_is_fixed_unless_the_budget_cannot_hold_it():
    from vito_fast.demo import DEFAULT_STEPS, DemoSettings, choose_steps

    fast = 0.05  # seconds per model-only step, about this CPU's
    assert choose_steps(DemoSettings(), fast, 14 * 60) == (DEFAULT_STEPS, None)
    steps, note = choose_steps(DemoSettings(), 5 * fast, 14 * 60)  # a machine five times slower
    assert 3 <= steps < DEFAULT_STEPS and str(steps) in note and "--minutes" in note
    assert choose_steps(DemoSettings(steps=50), 100.0, 1.0) == (50, None)  # asked for: kept
    # seeds share the budget, and the default budget grows with them (15 minutes a seed)
    assert DemoSettings(seeds=3).budget_minutes() == 45 and DemoSettings(minutes=20, seeds=3).budget_minutes() == 20
    assert choose_steps(DemoSettings(seeds=3), fast, 3 * 14 * 60) == (DEFAULT_STEPS, None)


def test_the_attention_claim_takes_its_error_across_seeds():
    from vito_fast.demo import Verdict
    from vito_fast.demo.claims import judge_attention
    from vito_fast.demo.report import claim_line

    def with_attention(run, mass):
        run.attention_mass, run.attention_iou = {"layer3": mass, "layer4": 0.1}, {"layer3": 0.5, "layer4": 0.1}
        return run

    frames = np.full(8, 4.0)
    seeds = {name: [_run(np.full(8, 2.0), frames) for _ in range(3)] for name in ("random", "dt0", "avgpool")}
    seeds["vito"] = [with_attention(_run(np.full(8, 3.0), frames), mass) for mass in (0.40, 0.35, 0.38)]
    seeds["random"][0] = with_attention(seeds["random"][0], 0.2)
    summary = _summary(seeds, centred_gaussian_attention_mass=0.30, centred_gaussian_attention_iou=0.3,
                       object_area_fraction=0.2)
    judged = judge_attention(summary)
    differences = np.array([0.10, 0.05, 0.08])
    error = differences.std(ddof=1) / np.sqrt(3)
    assert judged.verdict is Verdict.SHOWN and judged.stage == "layer3" and judged.seeds == 3
    assert abs(judged.error - error) < 1e-12 and judged.random_share == 0.2
    line = claim_line(judged)
    assert line.startswith("- the attention maps follow the objects: yes") and "over 3 seeds" in line
    assert f"± {100 * error:.0f}," in line and "layer3" in line
