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
