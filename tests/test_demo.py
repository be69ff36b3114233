"""`vito-fast demo --minutes 1` at a tiny size runs end to end and writes its report."""
from __future__ import annotations

import json

from PIL import Image

from vito_fast.cli.main import main


def test_demo_runs_end_to_end_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--minutes", "1", "--videos-per-class", "2", "--num-frames", "8",
                 "--eval-videos", "1", "--quiet", "data.batch_size=4", "data.image_size=32"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["variants"]) == {"random", "vito", "dt0", "avgpool"}
    assert results["variants"]["random"]["steps"] == 0  # the untrained model
    for name in ("vito", "dt0"):
        variant = results["variants"][name]
        assert variant["steps"] == results["steps"] >= 3 and len(results["losses"][name]) == variant["steps"]
        assert 0.0 <= variant["knn"] <= 1.0 and 0.0 <= variant["propagation_J"] <= 1.0
        assert set(variant["attention_iou"]) == {"layer3", "layer4"}
    assert results["variants"]["avgpool"]["steps"] == results["steps"]
    assert results["variants"]["avgpool"]["attention_iou"] == {}  # average pooling has no attention to score
    report = (out / "report.md").read_text()
    assert "| VITO |" in report and "| random init |" in report and "Does it show the paper's claims?" in report
    for picture in ("loss_curves.png", "evaluations.png", "attention_vito.png"):
        assert f"({picture})" in report
        with Image.open(out / picture) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert "report:" in capsys.readouterr().out


def test_a_claim_counts_only_beyond_twice_its_standard_error():
    from vito_fast.demo_report import verdict

    assert verdict(0.10, 0.04) == "yes"
    assert verdict(0.07, 0.04).startswith("**not clearly**")
    assert verdict(-0.07, 0.04).startswith("**not clearly**")
    assert verdict(-0.10, 0.04).startswith("**no**")


def test_cross_validated_accuracy_tests_every_clip_and_reports_its_noise():
    import numpy as np
    import torch

    from vito_fast.demo import cross_validated_accuracy

    groups = np.repeat(np.arange(12), 4)
    labels = groups % 3
    separable = torch.nn.functional.one_hot(torch.from_numpy(labels), 3).float() + 0.01 * torch.randn(48, 3)
    for probe in ("knn", "linear"):
        accuracy, error = cross_validated_accuracy(separable, labels, groups, probe)
        assert accuracy == 1.0 and error == 0.0
    noise = torch.randn(48, 8, generator=torch.Generator().manual_seed(0))
    accuracy, error = cross_validated_accuracy(noise, labels, groups, "knn")
    assert 0.0 <= accuracy <= 0.7 and error > 0.02  # near chance (1/3), and clips disagree
