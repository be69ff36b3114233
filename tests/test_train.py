"""The pretraining loop on CPU: schedules, LARS, config, runs end to end, resume, kill, DDP, export, ops paths.

Every run is a tiny ResNet-18 at 32 px, batch 4, narrow heads, on-device synthetic pairs.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision

from vito_fast.cli import export as export_cli
from vito_fast.cli import pretrain as pretrain_cli
from vito_fast.train.checkpoint import ConfigMismatchError, load_checkpoint
from vito_fast.train.config import config_diff, load_config
from vito_fast.train.lars import LARS, param_groups
from vito_fast.train.loop import NonFiniteLossError, train
from vito_fast.train.schedules import ema_momentum, learning_rate, scaled_lr

TINY = ["data.source=synthetic", "data.image_size=32", "data.batch_size=4", "data.steps_per_epoch=3",
        "model.pool_hidden=16", "model.proj_hidden=32", "model.proj_dim=16", "model.pred_hidden=32",
        "optim.warmup_steps=2", "train.log_every=1", "train.image_every=2", "train.progress=false",
        "train.device=cpu"]


def tiny(*overrides: str):
    return load_config("demo", overrides=TINY + list(overrides))


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def metrics_losses(run_dir) -> dict:
    """step → loss from RUN/metrics.jsonl (the last record of a step wins, as after a resume)."""
    losses = {}
    with open(run_dir / "metrics.jsonl") as handle:
        for line in handle:
            record = json.loads(line)
            if "loss" in record:
                losses[record["step"]] = record["loss"]
    return losses


# ---------------------------------------------------------------- schedules, LARS, config


def test_learning_rate_schedule_key_steps():
    kw = dict(peak_lr=2.0, warmup_steps=10, total_steps=110, final_lr=0.2)
    assert learning_rate(0, **kw) == 0.0
    assert learning_rate(5, **kw) == pytest.approx(1.0)
    assert learning_rate(10, **kw) == pytest.approx(2.0)                  # peak right after warm-up
    assert learning_rate(60, **kw) == pytest.approx(0.2 + 1.8 * 0.5)      # half-way down the cosine
    assert learning_rate(110, **kw) == pytest.approx(0.2)
    assert learning_rate(500, **kw) == pytest.approx(0.2)                 # stays at the floor


def test_ema_momentum_schedule_key_steps():
    assert ema_momentum(0, total_steps=100) == pytest.approx(0.996)
    assert ema_momentum(50, total_steps=100) == pytest.approx(0.998)
    assert ema_momentum(100, total_steps=100) == pytest.approx(1.0)
    values = [ema_momentum(s, total_steps=100) for s in range(101)]
    assert values == sorted(values)


def test_lars_adapts_weights_but_not_biases_or_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    groups = param_groups(model)
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight)}
    assert {id(p) for p in groups[1]["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    optimizer = LARS(groups, lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.01)
    weight, bias = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    weight_grad, bias_grad = model[0].weight.grad.clone(), model[0].bias.grad.clone()
    optimizer.step()
    update = weight_grad + 0.1 * weight
    trust = 0.01 * weight.norm() / update.norm()
    torch.testing.assert_close(model[0].weight.detach(), weight - 0.5 * trust * update)
    torch.testing.assert_close(model[0].bias.detach(), bias - 0.5 * bias_grad)  # plain SGD, no decay


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  arch: resnet34\n  stages: [layer2, layer4]\noptim:\n  base_lr: 2\n")
    config = load_config("demo", str(path), ["optim.weight_decay=1e-5", "data.views.crop_scale=[0.2, 1.0]"])
    assert config.model.arch == "resnet34" and config.model.stages == ("layer2", "layer4")
    assert config.optim.base_lr == 2.0 and isinstance(config.optim.base_lr, float)
    assert config.optim.weight_decay == 1e-5 and config.data.views.crop_scale == (0.2, 1.0)
    assert config.data.image_size == 64  # from the preset
    assert config_diff(config, load_config("demo")) == [
        "data.views.crop_scale", "model.arch", "model.stages", "optim.base_lr", "optim.weight_decay"]
    with pytest.raises(ValueError, match="optim.base_rate"):
        load_config("demo", overrides=["optim.base_rate=1"])
    with pytest.raises(ValueError, match="train.steps must be an integer"):
        load_config("demo", overrides=["train.steps=many"])
    with pytest.raises(ValueError, match="ViewConfig.crop_scale"):
        load_config("demo", overrides=["data.views.crop_scale=[0.5, 2.0]"])


def test_rng_states_survive_a_weights_only_checkpoint_round_trip(tmp_path):
    import random

    import numpy as np

    from vito_fast.train.checkpoint import capture_rng, restore_rng

    torch.save({"rng": capture_rng()}, tmp_path / "rng.pt")
    first = (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random())
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()) == first


# ---------------------------------------------------------------- runs end to end


def test_demo_steps_change_weights_and_export_loads_into_torchvision(tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain_cli.main(["--preset", "demo", "--data", "synthetic", "--out", str(run), "--steps", "3",
                              *TINY[1:], "model.width=64"]) == 0  # full width: the export loads into torchvision
    state = load_checkpoint(run)
    assert state["step"] == 3 and state["loader"] == {"epoch": 1, "step": 0, "steps_per_epoch": 3}
    torch.manual_seed(state["config"]["train"]["seed"])
    from vito_fast.model import VITO
    from vito_fast.train.config import from_dict

    initial = VITO.from_config(from_dict(state["config"]).model).state_dict()
    changed = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert any(k.startswith("online.trunk.") for k in changed) and any(k.startswith("predictors.") for k in changed)
    assert any(not torch.equal(v, initial[f"target.{k}"]) for k, v in state["target"].items() if v.is_floating_point())
    losses = metrics_losses(run)
    assert sorted(losses) == [0, 1, 2] and all(math.isfinite(v) for v in losses.values())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"loss/total", "loss/layer3", "loss/layer4", "lr", "momentum", "perf/pairs_per_s",
            "perf/data_wait_percent"} <= set(events.Tags()["scalars"])
    assert {"attention/layer3", "attention/layer4"} <= set(events.Tags()["images"])

    assert export_cli.main([str(run), "-o", str(tmp_path / "encoder.pth")]) == 0
    weights = torch.load(tmp_path / "encoder.pth", weights_only=True)
    result = torchvision.models.resnet18().load_state_dict(weights, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    assert torch.equal(weights["conv1.weight"], state["model"]["online.trunk.conv1.weight"])


def test_loss_decreases_on_a_tiny_overfit_set(tmp_path):
    config = tiny("data.synthetic_samples=4", "optim.base_lr=2.0", "train.steps=12",
                  "train.checkpoint_every=100", "train.image_every=0", "model.width=64")  # calibrated at full width
    losses = train(config, tmp_path / "run").losses
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    config = tiny("train.steps=5", "train.checkpoint_every=2")
    uninterrupted = train(config, tmp_path / "a").losses
    # Interrupted at step 3 (a checkpoint is written when a run stops early), then resumed.
    first = train(tiny("train.steps=5", "train.checkpoint_every=2", "train.stop_after=3"), tmp_path / "b")
    assert first.step == 3 and load_checkpoint(tmp_path / "b")["step"] == 3
    second = train(config, tmp_path / "b", resume=True)
    assert second.step == 5
    torch.testing.assert_close(first.losses + second.losses, uninterrupted, rtol=0, atol=1e-5)


def test_resume_refuses_a_different_config_naming_the_keys(tmp_path):
    train(tiny("train.steps=1"), tmp_path / "run")
    with pytest.raises(ConfigMismatchError, match=r"model\.proj_dim: checkpoint 16, now 8.*optim\.base_lr"):
        train(tiny("train.steps=1", "model.proj_dim=8", "optim.base_lr=0.1"), tmp_path / "run", resume=True)
    # Logging cadence and CPU threads are free to change; the caller's thread count is restored.
    assert train(tiny("train.steps=2", "train.log_every=2", "train.cpu_threads=2"), tmp_path / "run2").step == 2
    assert torch.get_num_threads() == 1
    assert train(tiny("train.steps=2", "train.log_every=1"), tmp_path / "run2", resume=True).step == 2


def test_a_finished_run_is_extended_and_says_where_its_schedules_differ(tmp_path, capsys):
    train(tiny("train.steps=4", "optim.warmup_steps=2"), tmp_path / "run")
    capsys.readouterr()
    extended = train(tiny("train.steps=6", "optim.warmup_steps=2"), tmp_path / "run", resume=True)
    assert extended.step == 6 and len(extended.losses) == 2
    out = capsys.readouterr().out
    # warm-up (steps 0, 1) and the peak (step 2) are the same for 4 and 6 steps; the cosine decay
    # differs from step 3 on, the momentum (a cosine from step 0) from step 1 on
    assert ("train.steps 4 -> 6 at step 4: the schedules follow 6 steps from here; the learning rate differs "
            "from an uninterrupted 6-step run from step 3 on, the EMA momentum from step 1 on") in out
    assert "pretrain: loss " in out and " over 2 steps, " in out and "pairs/s" in out
    config = tiny("train.steps=6", "optim.warmup_steps=2")
    peak = scaled_lr(config.optim.base_lr, config.data.batch_size)
    logged = {}
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "lr" in record:
            logged[record["step"]] = record["lr"]
    for step in (4, 5):  # the resumed steps follow the 6-step schedule
        assert logged[step] == pytest.approx(learning_rate(step, peak_lr=peak, warmup_steps=2, total_steps=6))
    # other changes stay refused, naming the keys and the way to accept them
    with pytest.raises(ConfigMismatchError, match=r"optim\.base_lr.*--allow-config-change optim\.base_lr"):
        train(tiny("train.steps=7", "optim.warmup_steps=2", "optim.base_lr=0.1"), tmp_path / "run", resume=True)
    accepted = train(tiny("train.steps=7", "optim.warmup_steps=2", "optim.base_lr=0.1"), tmp_path / "run",
                     resume=True, allow_config_change=["optim.base_lr"])
    assert accepted.step == 7
    with pytest.raises(ValueError, match="no config key optim.base_rate"):
        train(tiny("train.steps=8"), tmp_path / "run", resume=True, allow_config_change=["optim.base_rate"])


def test_pretrain_cli_extends_a_run_and_ends_with_the_next_commands(tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain_cli.main(["--preset", "demo", "--data", "synthetic", "--out", str(run), "--steps", "2",
                              *TINY[1:]]) == 0
    out = capsys.readouterr().out
    assert "pretrain: loss " in out and f"vito-fast eval knn --run {run}" in out and "vito-fast demo" in out
    assert pretrain_cli.main(["--resume", str(run), "--steps", "3"]) == 0
    assert load_checkpoint(run)["step"] == 3 and "train.steps 2 -> 3" in capsys.readouterr().out
    assert pretrain_cli.main(["--resume", str(run), "--steps", "4", "optim.base_lr=0.2"]) == 1
    assert "--allow-config-change optim.base_lr" in capsys.readouterr().err
    assert pretrain_cli.main(["--resume", str(run), "--steps", "4", "--allow-config-change", "optim.base_lr",
                              "optim.base_lr=0.2"]) == 0
    assert load_checkpoint(run)["config"]["optim"]["base_lr"] == 0.2


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from vito_fast.model.vito import VITO

    forward, calls = VITO.forward, []

    def poisoned(self, view1, view2):
        calls.append(1)
        loss, parts = forward(self, view1, view2)
        return (loss * float("nan"), parts) if len(calls) >= 4 else (loss, parts)

    monkeypatch.setattr(VITO, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite \(nan\) at step 3.*checkpoint\.pt is kept"):
        train(tiny("train.steps=6", "train.checkpoint_every=2", "train.log_every=2"), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run")["step"] == 2


def test_sigkill_resumes_from_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = ["--data", "synthetic", "--out", str(run), "--steps", "4", "train.checkpoint_every=1", *TINY[1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "vito_fast", "pretrain", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (run / "checkpoint.pt").exists() and len(metrics_losses(run)) >= 2:
                break
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = load_checkpoint(run)["step"]
    assert 1 <= killed_at < 4, "the run finished before it could be killed; make it longer"
    assert pretrain_cli.main(["--resume", str(run)]) == 0
    assert load_checkpoint(run)["step"] == 4
    reference = train(tiny("train.steps=4", "train.checkpoint_every=1"), tmp_path / "reference").losses
    resumed = metrics_losses(run)
    torch.testing.assert_close([resumed[s] for s in range(4)], reference, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- distributed and ops paths


def _ddp_worker(rank: int, world_size: int, init_file: str, run_dir: str, out_file: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        result = train(tiny("train.steps=3", "train.checkpoint_every=3", "data.batch_size=2"), run_dir)
        if rank == 0:
            with open(out_file, "w") as handle:
                json.dump(result.losses, handle)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_run_equals_one_process_run(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp"), str(tmp_path / "losses.json")),
             nprocs=2, join=True)
    two_process = json.loads((tmp_path / "losses.json").read_text())
    single = train(tiny("train.steps=3", "train.checkpoint_every=3", "data.batch_size=4"), tmp_path / "single")
    torch.testing.assert_close(two_process, single.losses, rtol=1e-4, atol=1e-4)
    # The same global batch and the same weights after 3 steps (rank 0's checkpoint).
    ddp_trunk = load_checkpoint(tmp_path / "ddp")["model"]["online.trunk.layer4.1.conv2.weight"]
    single_trunk = load_checkpoint(tmp_path / "single")["model"]["online.trunk.layer4.1.conv2.weight"]
    torch.testing.assert_close(ddp_trunk, single_trunk, rtol=1e-3, atol=1e-5)


def test_fused_and_reference_ops_give_the_same_losses(tmp_path, kernel_device, monkeypatch):
    """backend=triton runs the Triton kernels on kernel_device (the GPU, or the CPU through Triton's
    interpreter, see conftest); both runs in float32, so that only the ops differ."""
    if kernel_device == "cuda":  # no bf16 autocast, no TF32 convolutions: float32 like the kernels
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    steps = ["train.steps=2", "train.checkpoint_every=2", "train.image_every=0", "data.image_size=32",
             f"train.device={kernel_device}", "train.amp=false"]
    fused = train(tiny(*steps, "model.backend=triton"), tmp_path / "fused")
    reference = train(tiny(*steps, "model.backend=torch"), tmp_path / "reference")
    torch.testing.assert_close(fused.stage_losses, reference.stage_losses, rtol=1e-4, atol=1e-4)


def test_pretrain_on_videos_names_the_files_it_could_not_use(tmp_path, capsys):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed: the loader source needs it")
    from videos import write_truncated_copy, write_video

    from vito_fast.prepare.scan import scan_videos
    from vito_fast.data.manifest import write_manifest

    (tmp_path / "videos").mkdir()
    for clip in range(4):
        write_video(tmp_path / "videos" / f"clip{clip}.webm", codec="vp9", width=64, height=48, fps=10,
                    num_frames=20, gop=5)
    records, _ = scan_videos([str(tmp_path / "videos")], workers=0, progress=False, min_seconds=0.5)
    manifest = write_manifest(tmp_path / "manifest.jsonl", records)
    broken = tmp_path / "videos" / "clip2.webm"  # cut after the scan, as a file that goes bad on disk
    write_truncated_copy(broken, tmp_path / "cut.webm", keep_fraction=0.05)
    (tmp_path / "cut.webm").replace(broken)
    overrides = [item for item in TINY if not item.startswith(("data.source", "data.steps_per_epoch"))]
    with pytest.warns(RuntimeWarning, match="clip2.webm"):
        result = train(load_config("demo", overrides=overrides + [
            f"data.path={manifest}", "train.steps=2", "data.decode_workers=1"]), tmp_path / "run")
    assert result.step == 2
    assert "1 file(s) could not be used (" + str(broken) in capsys.readouterr().out
    config = load_config("demo", overrides=overrides + [f"data.path={manifest}"])
    commands = pretrain_cli.next_steps(config, tmp_path / "run", stopped_early=False)
    assert f"vito-fast viz attention {tmp_path / 'run'} {records[0].path}" in commands
    # its clips have no label: kNN is no command to run on them, only a hint for labelled data
    assert f"--manifest {manifest}" not in commands and "# to score the features" in commands
