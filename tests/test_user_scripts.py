"""The package as a new user runs it: plain scripts, without ``if __name__ == "__main__":``.

Each test writes a script and runs it in a fresh interpreter (a file, code piped to ``python -``,
``python -c``), as a user would from a shell; what it checks is the exit status and what it prints.
"""
from __future__ import annotations

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

