"""The package as a new user runs it: plain scripts, and the commands pretrain says to run next.

Each test runs a fresh interpreter as a user would from a shell (a script file without
``if __name__ == "__main__":``, code piped to ``python -``, ``python -c``, ``vito-fast ...``);
what it checks is the exit status and what it prints.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from videos import write_video
from vito_fast.data.manifest import write_manifest
from vito_fast.prepare.scan import scan_videos

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed: PairLoader decodes and augments with it")

# no main guard: the decode workers must start without re-running this code
LOADER_SCRIPT = """\
from vito_fast.data import LoaderConfig, PairLoader

config = LoaderConfig(image_size=32, dtype="float32", num_threads=1, decode_workers=2)
loader = PairLoader({manifest!r}, 2, device="cpu", seed=0, config=config)
batch = next(iter(loader))
print("first batch", tuple(batch["view1"].shape), "restarts", loader.stats.worker_restarts)
loader.close()
"""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, pyav) -> str:
    folder = tmp_path_factory.mktemp("user_clips")
    for index in range(3):
        write_video(folder / f"clip{index}.webm", codec="vp9", width=64, height=48, fps=10, num_frames=12, gop=4)
    records, rejected = scan_videos([str(folder)], workers=0, progress=False, min_seconds=0.5)
    assert len(records) == 3 and not rejected, rejected
    return str(write_manifest(folder / "manifest.jsonl", records))


def run_python(arguments, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *arguments], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("how", ["file", "stdin", "-c"])
def test_a_script_without_main_guard_loads_videos_in_worker_processes(manifest, tmp_path, how):
    code = LOADER_SCRIPT.format(manifest=manifest)
    if how == "file":
        (tmp_path / "train_me.py").write_text(code)
        finished = run_python(["train_me.py"], tmp_path)
    elif how == "stdin":
        finished = run_python(["-"], tmp_path, stdin=code)
    else:
        finished = run_python(["-c", code], tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "first batch (2, 3, 32, 32) restarts 0" in finished.stdout, finished.stdout + finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr, finished.stderr[-3000:]



# no main guard either: the probe, transcode and extraction processes must not run this code again
PREPARE_SCRIPT = """\
from vito_fast.prepare.scan import scan_videos
from vito_fast.prepare.transcode import transcode_clips
from vito_fast.prepare.frame_store_write import extract_frames

records, rejected = scan_videos([{folder!r}], workers=2, progress=False, min_seconds=0.5)
print("scanned", len(records), "rejected", len(rejected))
transcoded = transcode_clips(records, {out!r} + "/small", short_side=32, workers=2, progress=False)
print("transcoded", len(transcoded))
print("extracted", extract_frames(records, {out!r} + "/frames", fps=4, workers=2, progress=False))
"""


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_a_script_without_main_guard_prepares_videos_in_worker_processes(manifest, tmp_path, how):
    code = PREPARE_SCRIPT.format(folder=str(Path(manifest).parent), out=str(tmp_path))
    if how == "file":
        (tmp_path / "prepare_me.py").write_text(code)
        finished = run_python(["prepare_me.py"], tmp_path)
    else:
        finished = run_python(["-"], tmp_path, stdin=code)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "scanned 3 rejected 0" in finished.stdout and "transcoded 3" in finished.stdout, finished.stdout
    assert finished.stdout.count("scanned") == 1  # the script ran once: its workers did not run it again
    assert "Traceback" not in finished.stderr, finished.stderr[-3000:]


TINY_RUN = ["data.image_size=32", "data.batch_size=2", "data.decode_workers=1", "model.pool_hidden=16",
            "model.proj_hidden=32", "model.proj_dim=16", "model.pred_hidden=32", "optim.warmup_steps=1",
            "train.progress=false", "train.device=cpu"]


def test_the_next_steps_pretrain_prints_work_on_unlabelled_videos(manifest, tmp_path):
    run = tmp_path / "run"
    finished = run_python(["-m", "vito_fast", "pretrain", "--data", manifest, "--out", str(run), "--steps", "2",
                           *TINY_RUN], tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    described = (run / "data.md").read_text()  # what fed the run, kept beside it
    assert f"- source: `{manifest}`: 3 clips" in described and "- data backend auto -> " in described
    assert "- video decoder: pyav; requested: pyav" in described, described
    printed = finished.stdout[finished.stdout.index("next:"):].splitlines()[1:]
    commands = [line.split("  #")[0].strip() for line in printed if not line.strip().startswith("#")]
    assert not any("eval knn" in command for command in commands), printed  # its clips have no labels
    assert any(command.startswith("vito-fast viz attention") for command in commands), printed
    assert any("eval knn" in line for line in printed if line.strip().startswith("#")), printed  # said how, not run
    ran = []
    for command in commands:
        if command == "vito-fast demo":  # its own data, whatever the run's: minutes, tested in test_demo
            continue
        words = shlex.split(command)
        assert words[0] == "vito-fast", command
        done = run_python(["-m", "vito_fast", *words[1:]], tmp_path)
        assert done.returncode == 0, f"{command}:\n{done.stderr[-3000:]}"
        ran.append(words[1])
    assert ran == ["viz", "export"], ran


def test_the_next_steps_on_labelled_built_in_videos_score_them(tmp_path):
    from vito_fast.cli.pretrain import next_steps
    from vito_fast.data.manifest import ClipRecord
    from vito_fast.train.config import load_config

    data = tmp_path / "run" / "data"  # the built-in videos: labelled clips and a dataset.json
    data.mkdir(parents=True)
    (data / "dataset.json").write_text("{}")
    write_manifest(data / "manifest.jsonl", [ClipRecord(str(data / f"{index}.webm"), 12, 10.0, 64, 48, "vp9", 1.2,
                                                        label=f"class{index % 2}") for index in range(4)])
    run = tmp_path / "run"
    commands = next_steps(load_config("demo"), run, stopped_early=False)
    assert f"vito-fast eval knn --run {run} --manifest {data / 'manifest.jsonl'}" in commands
    assert f"vito-fast eval shape-bias --run {run} --synthetic {data}" in commands
    assert f"vito-fast viz attention {run} {data / '0.webm'}" in commands and "# to score" not in commands
    average = next_steps(load_config("demo", overrides=["model.pooling=average"]), run, stopped_early=False)
    assert "viz attention" not in average and "eval knn" in average  # no attention maps to draw
