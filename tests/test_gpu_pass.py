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
ALWAYS_OK = ["device", "tests_kernels", "info_nce_4k", "info_nce_16k", "info_nce_64k", "attention_pool_7x7",
             "attention_pool_14x14", "train_eager", "compile_kernels", "train_compiled", "frame_store",
             "loader_store_torch", "train_loader_torch"]  # the torch backend needs nothing optional


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


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_step_past_its_limit_is_stopped_with_its_children_and_the_pass_goes_on(dry_run):
    _, _, steps = dry_run
    slow = steps["injected_slow"]
    assert slow["status"] == "timeout" and "limit" in slow["reason"]
    assert "process group (2 processes)" in slow["reason"], slow["reason"]  # the step and its child
    (row,) = slow["rows"]  # what it measured before the limit
    assert row["note"] == "sleeping past the limit" and len(row["pids"]) == 2
    assert not any(_alive(pid) for pid in row["pids"]) and slow["survivors"] == 0
    assert slow["seconds"] < slow["limit_s"] + 10
    assert steps["tests_kernels"]["status"] == "ok"  # the next step ran
    assert all(step.get("survivors", 0) == 0 for step in steps.values())


def test_steps_live_in_the_pass_session_and_die_with_it(tmp_path):
    """The device tool ends what a command leaves in its session; a step that started a session of
    its own would outlive the command. Stopping the pass stops the running step's group."""
    import signal
    import time

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    work = tmp_path / "work"
    command = [sys.executable, str(BENCHES / "gpu_pass.py"), "--dry-run", "--only", "injected_slow",
               "--inject-slow-step", "--time-scale", "100", "--work", str(work), "--out", str(tmp_path / "out")]
    run = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,  # the "command" of the tool
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows_file, pids = work / "rows" / "injected_slow.jsonl", None
    deadline = time.monotonic() + 120
    while pids is None and time.monotonic() < deadline and run.poll() is None:
        if rows_file.is_file() and rows_file.read_text().strip():
            pids = json.loads(rows_file.read_text().splitlines()[0])["row"]["pids"]
        time.sleep(0.1)
    assert pids, run.communicate(timeout=30)[0][-3000:]
    assert {os.getsid(pid) for pid in pids} == {os.getsid(run.pid)}  # no step is a session of its own
    assert {os.getpgid(pid) for pid in pids} == {pids[0]} != {os.getpgid(run.pid)}  # a group of its own
    run.send_signal(signal.SIGTERM)
    output = run.communicate(timeout=30)[0]
    assert "stopped by signal" in output, output[-3000:]
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def test_dry_run_measures_every_provider_and_names_what_it_skipped(dry_run):
    out, report, steps = dry_run
    providers = {row["provider"]: row for row in steps["info_nce_16k"]["rows"]}
    assert list(providers) == ["eager", "ours", "ours, k without grad", "Inf-CL"]
    assert all(providers[name]["ms"] > 0 for name in ("eager", "ours", "ours, k without grad"))
    assert providers["Inf-CL"]["status"] == "skipped" and "GPU" in providers["Inf-CL"]["note"]
    assert {row["provider"] for row in steps["attention_pool_7x7"]["rows"]} == {"eager", "ours"}
    compiled = {row["op"]: row for row in steps["compile_kernels"]["rows"]}  # one shape per op, late
    assert set(compiled) == {"info_nce", "attention_pool"}
    assert all(row["ms"] > 0 and row["compile_s"] > 0 for row in compiled.values())
    assert compiled["attention_pool"]["hidden"] > 0  # training's MLP pool
    assert steps["train_compiled"]["rows"][0]["pairs_per_s"] > 0
    assert steps["video_pynvc"]["status"] == "skipped"  # needs a GPU (or, without PyAV, the video corpus)
    assert "GPU" in steps["video_pynvc"]["reason"] or "needs step video_corpus" in steps["video_pynvc"]["reason"]
    for name, part in [("loader_store", "nvidia.dali"), ("loader_store_cpu", "nvidia.dali"), ("video_corpus", "av"),
                       ("train_loader", "nvidia.dali")]:
        assert steps[name]["status"] == ("ok" if _importable(part) else "skipped"), (name, steps[name].get("reason"))
    (store,) = steps["loader_store_torch"]["rows"]  # the torch stage on the CPU: no GPU time, said so
    assert store["backend"] == "torch" and store["pairs_per_s"] > 0 and "decode_jpeg" in store["candidate"]
    assert store["gpu_ms_per_pair"] is None and "none on a CPU" in store["note"]
    (step,) = steps["train_loader_torch"]["rows"]
    assert step["backend"] == "torch" and step["pairs_per_s"] > 0
    if _importable("nvidia.dali"):
        assert [row["backend"] for row in steps["loader_store"]["rows"] + steps["train_loader"]["rows"]] == ["dali"] * 2
        derived = _load_gpu_pass().derive(report)  # one report, one card: torch ÷ DALI is taken
        assert derived["loader_store_torch"][0]["x_dali"] > 0 and derived["train_loader_torch"][0]["x_dali"] > 0
    if _importable("nvidia.dali") and _importable("av"):
        for name in ("video_pyav", "video_dali_reader", "video_dali_decoder"):
            assert steps[name]["status"] == "ok", (name, steps[name].get("reason"), steps[name].get("log_tail"))
    if _importable("av"):  # issue #26's steps: trials against PyAV, then PyAV's loader as every load's baseline
        rates = steps["decoder_rates"]
        assert rates["status"] == "ok", (rates.get("reason"), rates.get("log_tail"))
        trials = {row["decoder"]: row for row in rates["rows"] if row["kind"] == "trial" and row["corpus"] == "toy VP9"}
        assert trials["pyav"]["status"] == "verified"
        measured = [row for row in rates["rows"] if row["kind"] == "rate"]
        pyav = [row for row in measured if row["decoder"] == "pyav"]
        assert [(row["busy_cores"], row["host_cores"]) for row in pyav] == [(0, "all"), (1, "all"), (0, 2)]
        assert all(row["status"] == "ok" and row["pairs_per_s"] > 0 and row["cpu_ms_per_pair"] > 0
                   and row["x_pyav"] == 1.0 and row["nvdec_busy_pct"] is None for row in pyav)
        assert {row["decoder"] for row in measured} - {"pyav"} <= {"dali", "torchcodec"}
        assert steps["video_corpus_large"]["rows"][0]["files"] == 2
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
                 dict(nce, provider="ours, k without grad", ms=1.0)),
            step("info_nce_64k", dict(N=65536, D=256, status="ok", provider="ours", ms=20.0, peak_extra_gb=1.0)),
            step("attention_pool_7x7", dict(shape="512x2048x7x7", hidden=0, provider="eager", status="ok", ms=0.9),
                 dict(shape="512x2048x7x7", hidden=0, provider="ours", status="ok", ms=0.3, pct_of_hbm=70.0),
                 # the MLP pool: 35 % of HBM (its GEMMs bound it), 80 % of its roofline
                 dict(shape="512x2048x7x7", hidden=512, provider="ours", status="ok", ms=1.0, pct_of_hbm=35.0,
                      pct_of_roofline=80.0)),
            step("compile_kernels", dict(op="info_nce", N=16384, D=256, provider="torch.compile", status="ok", ms=2.5),
                 dict(op="attention_pool", shape="512x2048x7x7", hidden=512, provider="torch.compile", status="ok",
                      ms=1.5)),
            step("loader_store", dict(candidate="store gpu", backend="dali", device="gpu", status="ok",
                                      pairs_per_s=6000.0, gpu_ms_per_pair=0.05)),
            step("loader_store_cpu", dict(candidate="store cpu", backend="dali", device="cpu", status="ok",
                                          pairs_per_s=1500.0)),
            step("loader_store_torch", dict(candidate="store torch", backend="torch", device="gpu", status="ok",
                                            pairs_per_s=4500.0, gpu_ms_per_pair=0.08, gpu_busy_pct=40.0)),
            step("video_pyav", dict(candidate="pyav", device="gpu", status="ok", pairs_per_s=1000.0)),
            step("video_pynvc", dict(candidate="nvc", device="gpu", status="ok", pairs_per_s=3000.0)),
            step("decoder_rates",
                 dict(kind="trial", corpus="256p GOP-16 H.264", decoder="nvc", status="verified", pairs_per_s=900.0,
                      min_luma_psnr_db=41.5, chosen=True, note=""),
                 *[dict(kind="rate", corpus=corpus, decoder=decoder, device="gpu", host_cores=cores, busy_cores=0,
                        status="ok", pairs_per_s=rate, x_pyav=rate / 1000.0, cpu_ms_per_pair=0.8, nvdec_busy_pct=60.0)
                   for corpus, decoder, cores, rate in (("256p GOP-16 H.264", "pyav", 4, 600.0),
                                                        ("256p GOP-16 H.264", "nvc", 4, 2300.0),
                                                        ("256p GOP-16 H.264", "nvc", "all", 2900.0),
                                                        ("720p GOP-60 H.264", "nvc", 4, 2700.0))]),
            step("train_loader", dict(provider="loader", backend="dali", status="ok", pairs_per_s=2600.0,
                                      data_wait_pct=7.0)),
            step("train_loader_torch", dict(provider="loader", backend="torch", status="ok", pairs_per_s=1300.0,
                                            data_wait_pct=40.0)),
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
    assert rows["loader_store_torch"][0]["x_dali"] == pytest.approx(0.75)  # torch ÷ DALI, same card
    assert rows["train_loader_torch"][0]["x_dali"] == pytest.approx(0.5)
    assert "x_dali" not in rows["loader_store"][0]
    assert rows["video_pynvc"][0]["x_baseline"] == pytest.approx(3.0)  # against the PyAV workers
    verdicts = {goal: met for goal, _, met in gpu_pass.goals(rows)}
    assert verdicts["InfoNCE 16k: ours ≥ 3× eager"] and verdicts["InfoNCE 16k: ours ≥ 1.5× torch.compile"]
    assert verdicts["InfoNCE 64k: ours ≤ 22 ms"] and verdicts["linear attention pooling ≥ 60 % of HBM (worst shape)"]
    assert verdicts["MLP attention pooling ≥ 50 % of its roofline (worst shape)"]  # not judged on HBM
    mlp = next(row for row in rows["attention_pool_7x7"] if row["hidden"] == 512)
    assert mlp["x_compile"] == pytest.approx(1.5)  # torch.compile, measured late in compile_kernels
    assert verdicts["direct video ≥ 2,500 pairs/s (best candidate)"]
    goal = "direct video ≥ 2,500 pairs/s per GPU on ≤ 4 host cores, frames verified (256p GOP-16, best decoder)"
    assert verdicts[goal] is False  # 2,300 on 4 cores; 2,900 on every core and 2,700 at 720p do not count
    assert [row["decoder"] for row in rows["decoder_trials"]] == ["nvc"] and len(rows["decoder_rates"]) == 4
    assert verdicts["frame store ≥ 5,000 pairs/s, every augmentation (DALI)"]  # one verdict per device stage
    assert verdicts["frame store ≥ 5,000 pairs/s, every augmentation (torch)"] is False
    assert verdicts["training from real data ≥ 2,500 pairs/s (DALI)"]
    assert verdicts["training from real data ≥ 2,500 pairs/s (torch)"] is False
    assert verdicts["training from real data: data wait ≤ 5 % (DALI)"] is False
    markdown = gpu_pass.render_markdown(report)
    assert "| InfoNCE N=M=16k D=256 bf16 fwd+bwd | – | 0.7 | 0.6 | 1.200 | 2.00 |" in markdown  # ÷ H200 roofline
    assert "N=M=16384 D=256 dk: 1.200 ms" in markdown and "info_nce fwd fp16" not in markdown
    assert "| training from real data: data wait ≤ 5 % (DALI) | 7 % | NO |" in markdown
    assert "| frame store ≥ 5,000 pairs/s, every augmentation (torch) | 4.5e+03 pairs/s | NO |" in markdown
    assert "| store torch | gpu | ok | 4500 | 0.75 | 3.00 | 0.080 | 40 |" in markdown
    assert "| DALI | skipped: nvidia.dali not importable | train_eager |" in markdown
    assert "| 256p GOP-16 H.264 | nvc | 4 | 0 | ok | 2300 | 2.30 | 0.80 | 60 |" in markdown
    assert "| 256p GOP-16 H.264 | nvc | verified | 900 |" in markdown and f"| {goal} | 2.3e+03 pairs/s | NO |" in markdown


def test_joined_reports_take_torch_over_dali_only_on_the_same_card(tmp_path):
    """The plan's call 1 measures the torch stage, its last call DALI's: joined, the two compare
    where both ran on one card, and nowhere else."""
    _load_gpu_pass()
    import gpu_pass_report

    report, device = _made_up_gpu_report(), {"name": "NVIDIA H200", "uuid": "GPU-aaaa", "optional": {}}
    probe = {"name": "device", "group": "device", "status": "ok", "rows": []}
    eager = {"name": "train_eager", "group": "train", "status": "ok",
             "rows": [dict(provider="synthetic-eager", status="ok", pairs_per_s=2600.0)]}
    dali_steps = {"loader_store", "loader_store_cpu", "train_loader"}
    call_one = dict(report, device=device, steps=[probe, eager] + [
        s for s in report["steps"] if s["name"] not in dali_steps | {"train_eager"}])
    last = dict(report, device=device, steps=[probe] + [s for s in report["steps"] if s["name"] in dali_steps])
    joined = gpu_pass_report.combine([call_one, last])
    assert [s["name"] for s in joined["steps"]].count("device@2") == 1  # a name met again is renamed
    rows = gpu_pass_report.derive(joined)
    assert rows["loader_store_torch"][0]["x_dali"] == pytest.approx(0.75)
    assert rows["train_loader"][0]["x_eager"] == pytest.approx(1.0)  # call 1's eager step, the same card
    other = dict(last, device=dict(device, uuid="GPU-bbbb", name="NVIDIA H100 80GB HBM3"))
    rows = gpu_pass_report.derive(gpu_pass_report.combine([call_one, other]))
    assert rows["loader_store_torch"][0]["x_dali"] is None and rows["train_loader"][0]["x_eager"] is None
    assert rows["loader_store"][0]["x_baseline"] == pytest.approx(4.0)  # within the last call: one card
    verdicts = {goal: met for goal, _, met in gpu_pass_report.goals(rows)}  # absolute: judged on any card
    assert verdicts["frame store ≥ 5,000 pairs/s, every augmentation (DALI)"]
    assert verdicts["frame store ≥ 5,000 pairs/s, every augmentation (torch)"] is False
    paths = []
    for name, part in (("call1", call_one), ("call4", other)):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "gpu_pass.json")
        paths[-1].write_text(json.dumps(part))
    run = subprocess.run([sys.executable, str(BENCHES / "gpu_pass_report.py"), *map(str, paths), "--out",
                          str(tmp_path / "joined")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    markdown = (tmp_path / "joined" / "gpu_pass.md").read_text()
    assert "2 reports joined, on 2 cards" in markdown and "Ratios only between steps on the same card" in markdown
    joined = json.loads((tmp_path / "joined" / "gpu_pass.json").read_text())
    assert {step["card"] for step in joined["steps"]} == {"GPU-aaaa", "GPU-bbbb"}


def test_busy_time_sums_the_work_and_merges_the_overlaps():
    _load_gpu_pass()
    import gpu_pass_steps

    assert gpu_pass_steps.busy_us([(0, 10), (5, 20), (30, 35), (31, 32)]) == (31.0, 25.0)
    assert gpu_pass_steps.busy_us([]) == (0.0, 0.0)


def test_the_gpus_work_is_read_from_traces_of_older_and_newer_torch():
    """Kernels, copies and memsets count (a newer trace names each event's activity); in an older trace,
    without names, every event on the CUDA device counts but annotations. Host events never do."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from vito_fast.decoders.trial import gpu_work_spans

    def event(start, end, device, **named):
        return SimpleNamespace(time_range=SimpleNamespace(start=start, end=end), device_type=device, **named)

    newer = [event(0, 5, DeviceType.CUDA, activity_type="kernel"), event(5, 7, DeviceType.CUDA, activity_type="gpu_memcpy"),
             event(0, 9, DeviceType.CUDA, activity_type="gpu_user_annotation"),
             event(0, 3, DeviceType.CPU, activity_type="cpu_op")]
    older = [event(0, 5, DeviceType.CUDA), event(0, 9, DeviceType.CUDA, is_user_annotation=True),
             event(0, 3, DeviceType.CPU)]
    assert gpu_work_spans(SimpleNamespace(events=lambda: newer)) == [(0, 5), (5, 7)]
    assert gpu_work_spans(SimpleNamespace(events=lambda: older)) == [(0, 5)]


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


# ----------------------------------------------------------------------------- the plan and the staging


def _load_plan():
    _load_gpu_pass()
    import gpu_plan

    return gpu_plan


def _plan_table(gpu_plan, record=None):
    gpu_pass = _load_gpu_pass()
    record = record or gpu_plan.pack_record()
    catalogue = {step.name: step.limit_s for step in gpu_pass.STEPS}
    return gpu_plan.rows(gpu_plan.plan(record), record, catalogue, gpu_plan.tree_bytes()), catalogue


def test_the_plan_fits_the_lease():
    """`--plan`: every call's steps within its budget, every carry under 60 MiB, the whole lease
    (start, calls, idle gaps) under 13 minutes; call 1 needs nothing staged and brings back the most."""
    run = subprocess.run([sys.executable, str(BENCHES / "gpu_pass.py"), "--plan", "--calls"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Checks: all pass." in run.stdout and run.stdout.count('\nrun {"timeout_s"') >= 2
    gpu_plan = _load_plan()
    table, catalogue = _plan_table(gpu_plan)
    assert gpu_plan.problems(table, catalogue) == []
    first, *staging, last = table
    assert not any(".part" in path for path in first["carry"])  # nothing staged
    for name in ("tests_kernels", "info_nce_16k", "info_nce_64k", "attention_pool_7x7", "train_eager",
                 "compile_kernels", "train_compiled"):
        assert name in first["steps"], name
    assert first["steps"].index("compile_kernels") > first["steps"].index("attention_pool_7x7")  # compiles late
    assert "inf" in first["command"] and first["carry"] == [".gpu/call1"]  # Inf-CL rides along
    for name in ("frame_store", "loader_store_torch", "train_loader_torch"):  # the torch stage: nothing staged
        assert name in first["steps"], name
    assert all(row["steps"] == () and len([p for p in row["carry"] if ".part" in p]) == 1 for row in staging)
    assert "install" in last["command"] and {"loader_store", "train_loader"} <= set(last["steps"])
    for row in table:
        assert len(row["command"]) <= 2000 and row["timeout_s"] <= 600
        assert row["limits_s"] <= row["budget_s"] and row["carry_mib"] <= gpu_plan.CARRY_LIMIT_MIB
    assert gpu_plan.total_s(table) <= 13 * 60


def test_issue_26s_plan_is_one_call_that_fits_the_lease():
    """`--plan decoders`: the decoder set's one part travels with the call that unpacks it and runs the
    decoder tests, both corpora and the decoders under load, within one command's 600 s."""
    run = subprocess.run([sys.executable, str(BENCHES / "gpu_pass.py"), "--plan", "decoders", "--calls"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Checks: all pass." in run.stdout
    gpu_plan, gpu_pass = _load_plan(), _load_gpu_pass()
    record = gpu_plan.pack_record("decoders")
    assert record["set"] == "decoders" and len(record["parts"]) == 1
    catalogue = {step.name: step.limit_s for step in gpu_pass.STEPS}
    (call,) = gpu_plan.rows(gpu_plan.decoders_plan(record), record, catalogue, gpu_plan.tree_bytes())
    assert call["carry"] == [".gpu/decoders/parts.json", f".gpu/decoders/{record['parts'][0]['name']}"]
    assert "install /tmp/site --parts .gpu/decoders/parts.json" in call["command"]
    assert call["steps"] == ("tests_decoders", "video_corpus", "video_corpus_large", "decoder_rates")
    assert call["limits_s"] <= call["budget_s"] and call["timeout_s"] <= 600 and len(call["command"]) <= 2000
    assert gpu_plan.total_s([call]) <= 13 * 60 and gpu_plan.problems([call], catalogue, complete=False) == []
    tight = dict(catalogue, decoder_rates=1000)
    (over,) = gpu_plan.rows(gpu_plan.decoders_plan(record), record, tight, 0)
    assert gpu_plan.problems([over], tight, complete=False)
    # DALI's NVDEC: the pass's own parts staged back to back, then the same measurements
    loader = gpu_plan.pack_record("loader")
    *staging, last = gpu_plan.rows(gpu_plan.dali_decoders_plan(loader), loader, catalogue, gpu_plan.tree_bytes())
    assert len(staging) == len(loader["parts"]) - 1 and all(row["steps"] == () for row in staging)
    assert last["steps"][-1] == "decoder_rates" and "install /tmp/site --parts .gpu/parts.json" in last["command"]
    assert gpu_plan.problems([*staging, last], catalogue, complete=False) == []


def test_the_plan_checks_catch_what_does_not_fit(monkeypatch):
    gpu_plan = _load_plan()
    record = json.loads(json.dumps(gpu_plan.pack_record()))
    record["parts"][0]["bytes"] = 70 * 2**20  # a part too large for one call
    table, catalogue = _plan_table(gpu_plan, record)
    found = gpu_plan.problems(table, catalogue)
    assert any("call 2 carries" in problem and "over 60 MiB" in problem for problem in found), found
    tight = dict(catalogue, train_compiled=1000)  # a step whose limit overruns its call's budget
    found = gpu_plan.problems(gpu_plan.rows(gpu_plan.plan(record), record, tight, 0), tight)
    assert any(problem.startswith("call 1: its steps' limits add up to") for problem in found), found
    monkeypatch.setattr(gpu_plan, "GAP_S", 200)  # slow gaps: the lease no longer fits
    table, catalogue = _plan_table(gpu_plan)
    assert any("of device time, over 780 s" in problem for problem in gpu_plan.problems(table, catalogue))
    assert _load_gpu_pass().print_plan(False) == 1  # --plan exits 1
    unplanned = dict(catalogue, new_step=5)
    assert any("new_step is neither" in p for p in gpu_plan.problems(table, unplanned))


def _fake_parts(folder: Path, site_files: dict, parts: int, archive: str = "gpu-site.tar.xz") -> dict:
    """A small site tree (a fake nvidia.dali and av) packed and split the way gpu_stage.pack does."""
    import hashlib
    import io
    import lzma

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in site_files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = lzma.compress(buffer.getvalue())
    size = -(-len(blob) // parts)
    record = {"parts": []} if archive == "gpu-site.tar.xz" else {"set": "decoders", "parts": []}
    for index in range(parts):
        chunk = blob[index * size:(index + 1) * size]
        name = f"{archive}.part{index:02d}"
        (folder / name).write_bytes(chunk)
        record["parts"].append({"name": name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    (folder / "parts.json").write_text(json.dumps(record))
    return record


def test_staging_says_in_one_line_which_part_is_missing_then_installs(tmp_path):
    carried = tmp_path / "carried"
    carried.mkdir()
    _fake_parts(carried, {"nvidia/__init__.py": "", "nvidia/dali/__init__.py": "__version__ = '9.9'\n",
                          "av/__init__.py": "__version__ = '1.2'\n"}, parts=3)
    env = {**os.environ, "HOME": str(tmp_path / "home")}

    def stage_tool(*args):
        return subprocess.run([sys.executable, str(BENCHES / "gpu_stage.py"), *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    assert stage_tool("stage", carried / "gpu-site.tar.xz.part00").returncode == 0
    site = tmp_path / "site"
    # part02 travels with the install call itself (found beside parts.json); part01 was never staged
    (carried / "gpu-site.tar.xz.part01").rename(tmp_path / "part01-elsewhere")
    missing = stage_tool("install", site, "--parts", carried / "parts.json")
    assert missing.returncode == 2 and "Traceback" not in missing.stdout + missing.stderr
    assert missing.stdout.strip().splitlines() == [
        "gpu_stage: part gpu-site.tar.xz.part01 is missing on this host (the machine was given back since it was "
        "staged, or its call did not run): stage it again"]
    (tmp_path / "part01-elsewhere").rename(carried / "gpu-site.tar.xz.part01")
    damaged = carried / "gpu-site.tar.xz.part01"
    good = damaged.read_bytes()
    damaged.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert stage_tool("stage", damaged).returncode == 0
    broken = stage_tool("install", site, "--parts", carried / "parts.json")
    assert broken.returncode == 2 and "part01 is damaged" in broken.stdout
    damaged.write_bytes(good)
    assert stage_tool("stage", damaged).returncode == 0
    done = stage_tool("install", site, "--parts", carried / "parts.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"with PYTHONPATH={site}: nvidia.dali 9.9; av 1.2" in done.stdout
    assert (site / "nvidia" / "dali" / "__init__.py").is_file()
    assert "was not carried" in stage_tool("stage", carried / "nothing.part09").stdout


def test_the_decoder_set_installs_in_one_part_and_says_what_does_not_import(tmp_path):
    """Issue #26's set (``pack --set decoders``): one part carried with its call; install names each
    module it brings, and one that does not import (PyNvVideoCodec without a driver) in the same line."""
    carried = tmp_path / "carried"
    carried.mkdir()
    _fake_parts(carried, {"av/__init__.py": "__version__ = '18.1.0'\n",
                          "torchcodec/__init__.py": "__version__ = '0.17.0'\n",
                          "PyNvVideoCodec/__init__.py": "raise OSError('libnvcuvid.so.1: cannot open shared object"
                                                        "\\n\\n=== TROUBLESHOOTING STEPS ===\\n')\n"},
                parts=1, archive="decoders-site.tar.xz")
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, str(BENCHES / "gpu_stage.py"), "install", str(site), "--parts",
                           str(carried / "parts.json")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    (line,) = done.stdout.strip().splitlines()
    assert line.endswith(f"with PYTHONPATH={site}: av 18.1.0; PyNvVideoCodec does not import (OSError: "
                         f"libnvcuvid.so.1: cannot open shared object); torchcodec 0.17.0"), line
    assert (site / "av" / "__init__.py").is_file()
