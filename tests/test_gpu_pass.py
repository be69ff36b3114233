"""benches/gpu_pass.py, the prepared GPU pass, run here as its dry run (toy sizes, CPU, reference paths).

The dry run goes through ``vito-fast bench gpu`` with a test-only step that sleeps past its time
limit: the pass must stop it, report it as a timeout with what it measured, and run every step
after it. The report's ratios, goals and compile-report matching are checked on made-up GPU rows.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ROOT / "benches"
ALWAYS_OK = ["device", "tests_kernels", "tests_data_train", "info_nce_4k", "info_nce_16k", "info_nce_64k",
             "attention_pool_7x7", "attention_pool_14x14", "frame_store", "train_eager", "train_compiled"]


def _load_gpu_pass():
    if str(BENCHES) not in sys.path:
        sys.path.insert(0, str(BENCHES))
    import gpu_pass

    return gpu_pass


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_pass")
    # No Triton interpreter: the dry run times reference paths, and the compile report compiles for sm_90.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "vito_fast", "bench", "gpu", "--dry-run", "--out", str(out),
                          "--inject-slow-step"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads((out / "gpu_pass.json").read_text())
    return out, report, {step["name"]: step for step in report["steps"]}


def test_dry_run_reports_every_step_in_json_and_markdown(dry_run):
    out, report, steps = dry_run
    gpu_pass = _load_gpu_pass()
    assert list(steps) == ["device", "injected_slow"] + [step.name for step in gpu_pass.STEPS[1:]]
    markdown = (out / "gpu_pass.md").read_text()
    for name, step in steps.items():
        assert step["status"] in {"ok", "skipped", "timeout"}, (name, step.get("reason"), step.get("log_tail"))
        if step["status"] != "ok":
            assert step["reason"], name
        assert f"| {name} | {step['status']} |" in markdown
    for name in ALWAYS_OK:
        assert steps[name]["status"] == "ok", (name, steps[name].get("reason"), steps[name].get("log_tail"))
    assert report["dry_run"] and "Not judged in a dry run" in markdown
    with tarfile.open(out / "gpu_pass_logs.tar.gz") as logs:
        assert "logs/info_nce_4k.log" in logs.getnames()


def test_a_step_past_its_limit_is_stopped_and_the_pass_goes_on(dry_run):
    _, _, steps = dry_run
    slow = steps["injected_slow"]
    assert slow["status"] == "timeout" and "limit" in slow["reason"]
    assert slow["rows"] == [{"note": "sleeping past the limit"}]  # what it measured before the limit
    assert slow["seconds"] < slow["limit_s"] + 10
    assert steps["tests_kernels"]["status"] == "ok"  # the next step ran


def test_dry_run_measures_every_provider_and_names_what_it_skipped(dry_run):
    out, report, steps = dry_run
    providers = {row["provider"]: row for row in steps["info_nce_16k"]["rows"]}
    assert list(providers) == ["eager", "ours", "ours, k without grad", "torch.compile", "Inf-CL"]
    assert all(providers[name]["ms"] > 0 for name in ("eager", "ours", "ours, k without grad", "torch.compile"))
    assert providers["Inf-CL"]["status"] == "skipped" and "GPU" in providers["Inf-CL"]["note"]
    assert {row["provider"] for row in steps["attention_pool_7x7"]["rows"]} == {"eager", "ours", "torch.compile"}
    assert steps["train_compiled"]["rows"][0]["pairs_per_s"] > 0
    assert steps["video_pynvc"]["status"] == "skipped" and "GPU" in steps["video_pynvc"]["reason"]
    for name, part in [("loader_store", "nvidia.dali"), ("video_corpus", "av"), ("train_loader", "nvidia.dali")]:
        assert steps[name]["status"] == ("ok" if _importable(part) else "skipped"), (name, steps[name].get("reason"))
    if _importable("nvidia.dali") and _importable("av"):
        for name in ("video_pyav", "video_dali_reader", "video_dali_decoder"):
            assert steps[name]["status"] == "ok", (name, steps[name].get("reason"), steps[name].get("log_tail"))
    assert steps["compile_report"]["status"] == "ok" or "not available" in steps["compile_report"]["reason"]
    assert set(report["device"]["optional"]) == {"DALI", "PyAV", "PyNvVideoCodec", "Inf-CL", "torch.compile"}
    markdown = (out / "gpu_pass.md").read_text()
    assert "Optional parts:" in markdown and "backend='eager'" in markdown


def test_steps_started_by_exec_are_stopped_at_their_limit_too(tmp_path):
    """--no-fork, which the pass falls back to when CUDA fails in a forked step."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(BENCHES / "gpu_pass.py"), "--dry-run", "--no-fork", "--only",
                          "injected_slow", "--inject-slow-step", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_pass.json").read_text())
    assert report["steps_started_by"] == "exec"
    assert {step["name"]: step["status"] for step in report["steps"]} == {"device": "ok", "injected_slow": "timeout"}
    gpu_pass = _load_gpu_pass()
    assert gpu_pass._fork_broke_cuda({"status": "failed", "reason": "RuntimeError: Cannot re-initialize CUDA in "
                                                                    "forked subprocess"})
    assert not gpu_pass._fork_broke_cuda({"status": "failed", "reason": "ValueError: something else"})


def _made_up_gpu_report() -> dict:
    def step(name, *rows):
        return {"name": name, "group": "-", "status": "ok", "seconds": 1.0, "limit_s": 9.0, "rows": list(rows)}

    nce = dict(N=16384, D=256, status="ok")
    return {
        "command": "gpu_pass.py --out x", "dry_run": False, "date": "2026-11-28", "budget_s": 420, "elapsed_s": 300,
        "device": {"name": "NVIDIA H200",
                   "optional": {"DALI": {"available": False, "reason": "nvidia.dali not importable"}}},
        "steps": [
            step("info_nce_16k", dict(nce, provider="eager", ms=4.8), dict(nce, provider="ours", ms=1.2),
                 dict(nce, provider="ours, k without grad", ms=1.0), dict(nce, provider="torch.compile", ms=2.5)),
            step("info_nce_64k", dict(N=65536, D=256, status="ok", provider="ours", ms=20.0, peak_extra_gb=1.0)),
            step("attention_pool_7x7", dict(shape="512x2048x7x7", hidden=0, provider="eager", status="ok", ms=0.9),
                 dict(shape="512x2048x7x7", hidden=0, provider="ours", status="ok", ms=0.3, pct_of_hbm=70.0)),
            step("loader_store", dict(candidate="store gpu", device="gpu", status="ok", pairs_per_s=6000.0),
                 dict(candidate="store cpu", device="cpu", status="ok", pairs_per_s=1500.0)),
            step("video_pyav", dict(candidate="pyav", device="gpu", status="ok", pairs_per_s=1000.0)),
            step("video_pynvc", dict(candidate="nvc", device="gpu", status="ok", pairs_per_s=3000.0)),
            step("train_loader", dict(provider="loader-compiled", status="ok", pairs_per_s=2600.0, data_wait_pct=7.0)),
            step("compile_report",
                 dict(kind="roofline", what="InfoNCE N=M=16k D=256 bf16 fwd+bwd", H100_ms=0.7, H200_ms=0.6),
                 dict(kind="variant", variant="info_nce fwd bf16 single-D", registers=200, wgmma=16,
                      cases=["info_nce bf16 N=M=16384 D=256 dk", "info_nce bf16 N=M=4096 D=256 dk"]),
                 dict(kind="variant", variant="info_nce fwd fp16", cases=["info_nce fp16 N=M=16384 D=256"])),
            {"name": "train_eager", "group": "train", "status": "skipped", "rows": [], "reason": "needs DALI here"},
        ]}


def test_report_ratios_goals_and_compile_variants_beside_the_measured_times():
    gpu_pass = _load_gpu_pass()
    report = _made_up_gpu_report()
    rows = gpu_pass.derive(report)
    ours = next(row for row in rows["info_nce_16k"] if row["provider"] == "ours")
    assert ours["x_eager"] == pytest.approx(4.0) and ours["x_compile"] == pytest.approx(2.5 / 1.2)
    assert rows["loader_store"][0]["x_baseline"] == pytest.approx(4.0)  # against the CPU path
    assert rows["video_pynvc"][0]["x_baseline"] == pytest.approx(3.0)  # against the PyAV workers
    verdicts = {goal: met for goal, _, met in gpu_pass.goals(rows)}
    assert verdicts["InfoNCE 16k: ours ≥ 3× eager"] and verdicts["InfoNCE 16k: ours ≥ 1.5× torch.compile"]
    assert verdicts["InfoNCE 64k: ours ≤ 22 ms"] and verdicts["attention pooling ≥ 60 % of HBM (worst shape)"]
    assert verdicts["direct video ≥ 2,500 pairs/s (best candidate)"]
    assert verdicts["training from real data: data wait ≤ 5 %"] is False
    markdown = gpu_pass.render_markdown(report)
    assert "| InfoNCE N=M=16k D=256 bf16 fwd+bwd | – | 0.7 | 0.6 | 1.200 | 2.00 |" in markdown  # ÷ H200 roofline
    assert "N=M=16384 D=256 dk: 1.200 ms" in markdown and "info_nce fwd fp16" not in markdown
    assert "| training from real data: data wait ≤ 5 % | 7 % | NO |" in markdown
    assert "| DALI | skipped: nvidia.dali not importable | train_eager |" in markdown


def test_bench_gpu_runs_the_pass_with_the_remaining_arguments(monkeypatch, tmp_path):
    from vito_fast.cli import bench

    calls = []
    monkeypatch.setattr(bench.subprocess, "call", lambda command: calls.append(command) or 0)
    assert bench.main(["gpu", "--dry-run", "--out", "somewhere"]) == 0
    assert calls[-1] == [sys.executable, str(BENCHES / "gpu_pass.py"), "--dry-run", "--out", "somewhere"]
    assert bench.main(["--benches", str(tmp_path), "gpu", "--list"]) == 2  # no gpu_pass.py there
    assert bench.main(["sampler", "--", "-k", "x"]) == 0  # the suites still run through pytest
    assert calls[-1][1:3] == ["-m", "pytest"] and calls[-1][3].endswith("bench_sampler.py")
    assert calls[-1][-2:] == ["-k", "x"]
