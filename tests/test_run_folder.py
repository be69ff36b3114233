"""The run folder has one owner (vito_fast/train/run_folder.py): training writes through it, and
resume, export, evaluation, viz and the demo read through it; no other module spells its layout."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from vito_fast.model.vito import VITO
from vito_fast.train.checkpoint import load_checkpoint, save_model_checkpoint
from vito_fast.train.config import load_config
from vito_fast.train.run_folder import CHECKPOINT, RunFolder, encoder_weights

PACKAGE = Path(__file__).resolve().parents[1] / "vito_fast"
LAYOUT = {CHECKPOINT, "config.yaml", "metrics.jsonl", "tensorboard"}


def test_no_module_but_the_owner_builds_a_path_inside_a_run():
    """`run_dir / "checkpoint.pt"` and its kin appear only in run_folder.py."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "run_folder.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
                    and node.right.value in LAYOUT):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} / {node.right.value!r}")
    assert not offenders, offenders


def test_a_folder_or_its_checkpoint_name_the_same_run(tmp_path):
    run = RunFolder.of(tmp_path / "run")
    assert RunFolder.of(run.checkpoint) == run and run.checkpoint == tmp_path / "run" / CHECKPOINT
    with pytest.raises(FileNotFoundError, match=r"run: needs a run directory from `vito-fast pretrain`"):
        run.read()
    assert run.read_metrics() == []
    run.path.mkdir()
    run.metrics_file.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    assert [record["step"] for record in run.read_metrics()] == [1, 2]


def test_a_model_checkpoint_reads_back_as_a_run(tmp_path):
    """The demo's untrained baseline: the model alone, atomically, in the run's layout."""
    config = load_config("demo", overrides=["model.width=16", "model.pool_hidden=8", "model.proj_hidden=16",
                                            "model.proj_dim=8", "model.pred_hidden=16"])
    torch.manual_seed(0)
    model = VITO.from_config(config.model)
    path = save_model_checkpoint(tmp_path / "untrained", model=model, config=config)
    run = RunFolder.of(tmp_path / "untrained")
    assert path == run.checkpoint and not list(run.path.glob(".checkpoint-*"))  # no temporary left
    state = load_checkpoint(run.path)
    assert state["step"] == 0 and run.saved_config()["model"]["width"] == 16
    online = encoder_weights(state)
    assert online and all(not key.startswith("online.") for key in online)
    torch.testing.assert_close(online["trunk.conv1.weight"], model.online.trunk.conv1.weight)
    assert set(encoder_weights(state, "target")) == set(online)
