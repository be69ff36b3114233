"""The GPU pass: prepared commands that measure every fast path on an H100/H200 (issue #23).

    python benches/gpu_pass.py --plan --calls           # the device-tool calls, checked against the lease
    python benches/gpu_pass.py --out DIR                # or: vito-fast bench gpu --out DIR (every planned step)
    python benches/gpu_pass.py --dry-run --out DIR      # toy sizes on the CPU, reference paths (CI runs it)
    python benches/gpu_pass.py --list                   # the steps, their groups and time limits
    python benches/gpu_pass.py --out DIR --only NAMES   # steps or groups; --skip likewise; --budget SECONDS

Writes DIR/gpu_pass.json (every row, status and log tail), DIR/gpu_pass.md (the tables) and
DIR/gpu_pass_logs.tar.gz, all three again after every step, so a pass cut short still reports.
Each step (benches/gpu_pass_steps.py) runs in a process of its own (forked: the imports are paid
once) and in a process group of its own, inside the pass's session: a step past its limit is
stopped with every process of its group (pytest workers, decode processes) and reported as
``timeout`` with the rows it had measured, and the pass goes on; a pass that is stopped stops its
step's group first, and the device tool, which ends what a command leaves running in its session,
ends them all. The whole pass stays within ``--budget``: a step that would start with less than
10 s left is skipped and named.
Every figure stands beside a baseline measured in the same run on the same card: eager PyTorch
and torch.compile for the kernels (and the card's copy bandwidth and matrix rate for the
rooflines), the PyAV worker path for video, the eager step for training. The frame store's two
device stages, DALI's graph and the torch one (nvJPEG through torchvision, batched torch ops),
stand side by side as torch ÷ DALI, for the loader alone and for the step it feeds, where both ran
on the same card: in one report, or in the planned calls' reports joined by
``python benches/gpu_pass_report.py OUT1/gpu_pass.json OUT4/gpu_pass.json --out DIR``.

Optional parts are reported, never required: DALI and PyAV (the DALI and video loader steps; staged
in parts by benches/gpu_stage.py; the torch-backend steps need neither), Inf-CL (a 15 kB wheel
carried with the first call), PyNvVideoCodec, and torch.compile (Inductor on a GPU;
``backend="eager"`` in the dry run, where Inductor's C++ build would take minutes). The calls that
run the pass on a lent GPU, their carries, budgets and the device time they assume: ``--plan``
(benches/gpu_plan.py; CI checks that the plan fits).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the suites (bench_*.py) import as modules; vito_fast is installed (-e)
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() in a parent must not init CUDA

import bench_vit  # noqa: E402
import gpu_decoders  # noqa: E402
import gpu_pass_steps as steps  # noqa: E402
from gpu_pass_report import derive, goals, render_markdown  # noqa: E402,F401  (derive, goals: re-exported)

BUDGET_S = 600  # every step; a planned call passes its own --budget
MIN_START_S = 10  # a step is not started with less of the budget left


@dataclass(frozen=True)
class Step:
    name: str
    group: str
    limit_s: float
    title: str
    run: Callable[[steps.Context], None] = field(repr=False)
    needs: tuple = ()


# Limits are what a step may take on an H100/H200 host (16 cores), first compilations included;
# benches/gpu_plan.py adds them up per call against the call's budget.
STEPS: List[Step] = [
    Step("device", "device", 15, "card, versions, optional parts; copy bandwidth, matrix rate", steps.device),
    Step("tests_kernels", "tests", 75, "kernel test files in full and the training tests that use the chip "
         "(pytest -n)", steps.tests_kernels),
    *[Step(f"info_nce_{label}", "kernels", limit, f"InfoNCE fwd+bwd N=M={label}: eager, ours, Inf-CL",
           partial(steps.info_nce, label=label)) for label, limit in (("4k", 15), ("16k", 20), ("64k", 20))],
    *[Step(f"attention_pool_{label}", "kernels", limit, f"attention pooling fwd+bwd at {label}: eager, ours",
           partial(steps.attention_pool, label=label)) for label, limit in (("7x7", 15), ("14x14", 15))],
    Step("train_eager", "train", 30, "ResNet-50 VITO step, eager, synthetic pairs",
         partial(steps.train, provider="synthetic-eager")),
    Step("compile_kernels", "kernels", 55, "torch.compile of the references, one shape per op "
         "(InfoNCE 16k, attention pooling 7x7 MLP)", steps.compile_kernels),
    Step("train_compiled", "train", 100, "the same step, torch.compile of the trunks",
         partial(steps.train, provider="synthetic-compiled")),
    # Issue 28: ResNet-50 eager, then ViT-S/16 and ViT-B/16 eager and compiled (their presets), 224 px, 256 pairs,
    # bf16: five 60-step runs, two with Inductor's first compilation of a ViT.
    Step("train_vit", "train", 300, "ViT-S/16 and ViT-B/16 VITO steps, eager and compiled, beside ResNet-50 eager",
         bench_vit.gpu_step),
    Step("tests_loader", "tests", 40, "pytest -m cuda: loader tests (DALI, PyAV)", steps.tests_loader),
    # 12288 JPEGs from 16 threads: 9 s on the shared 2-core CPU here, a few seconds on the host.
    Step("frame_store", "loader", 8, "write a 256p JPEG frame store (PIL)", steps.frame_store),
    # A store loader step: CUDA's start, the pipeline, 2 warm-up batches, ≤ 4 s timed, ≤ 3 s profiled.
    Step("loader_store", "loader", 20, "PairLoader(backend=dali) on the store: nvJPEG; pairs/s, GPU ms per pair",
         steps.loader_store, needs=("frame_store",)),
    Step("loader_store_cpu", "loader", 15, "PairLoader(backend=dali) on the store, the host's cores",
         steps.loader_store_cpu, needs=("frame_store",)),
    Step("loader_store_torch", "loader", 15, "PairLoader(backend=torch) on the store: nvJPEG + batched torch ops; "
         "pairs/s, GPU ms per pair", steps.loader_store_torch, needs=("frame_store",)),
    # ResNet-50 at 224 px, 30 steps of 256 pairs, a checkpoint: ~20 s expected on an H100.
    Step("train_loader", "train", 35, "the eager step fed by the frame-store loader, backend=dali",
         partial(steps.train, provider="loader", backend="dali"), needs=("frame_store",)),
    Step("train_loader_torch", "train", 35, "the eager step fed by the frame-store loader, backend=torch",
         partial(steps.train, provider="loader", backend="torch"), needs=("frame_store",)),
    Step("video_corpus", "loader", 20, "write and scan 256p GOP-16 H.264 files (PyAV)", steps.video_corpus),
    Step("video_pyav", "loader", 25, "PairLoader, PyAV decode workers", steps.video_pyav, needs=("video_corpus",)),
    Step("video_dali_reader", "loader", 40, "DALI fn.readers.video sequences", steps.video_dali_reader,
         needs=("video_corpus",)),
    # SPEC: on an H200 this did not finish in 150 s on GOP-16 files; a short limit, on purpose.
    Step("video_dali_decoder", "loader", 25, "PairLoader, DALI fn.decoders.video", steps.video_dali_decoder,
         needs=("video_corpus",)),
    Step("video_pynvc", "loader", 30, "PyNvVideoCodec SimpleDecoder", steps.video_pynvc, needs=("video_corpus",)),
    Step("decoders", "loader", 60, "every video decoder's trial against PyAV and the choice (issue 26)",
         steps.decoders, needs=("video_corpus",)),
    # Issue #26 (its own plan, `--plan decoders`): the decoder test files in full, a 720p GOP-60 corpus beside
    # the 256p one, and each decoder the trials verify, through the loader, with the host's cores busy.
    Step("tests_decoders", "tests", 90, "decoder test files in full: contract, choice, decoder process, CUDA IPC "
         "(pytest -n)", gpu_decoders.tests_decoders),
    Step("video_corpus_large", "loader", 30, "write and scan 720p GOP-60 H.264 files (PyAV)",
         gpu_decoders.video_corpus_large),
    # per corpus: 4 trials (~25 s), then per verified decoder ~25 s at 4 loads and ~12 s held to 4 cores
    Step("decoder_rates", "loader", 330, "each verified decoder's loader with 0/4/8/16 cores busy and on 4 cores; "
         "CPU ms, NVDEC and SM busy per pair", gpu_decoders.decoder_rates, needs=("video_corpus",)),
    Step("compile_report", "kernels", 45, "bench_compile: sm_90 variants and roofline", steps.compile_report),
]
SLOW = Step("injected_slow", "test", 2, "test only: sleeps past its limit", steps.injected_slow)


def select(names: Optional[str], skip: Optional[str], inject_slow: bool) -> List[Step]:
    """The steps to run, in pass order: --only/--skip take step names or groups; needs are added."""
    catalogue = STEPS[:1] + ([SLOW] if inject_slow else []) + STEPS[1:]
    known = {step.name for step in catalogue} | {step.group for step in catalogue}

    def parse(text):
        chosen = {item.strip() for item in (text or "").split(",") if item.strip()}
        unknown = chosen - known
        if unknown:
            raise SystemExit(f"gpu_pass: no step or group named {', '.join(sorted(unknown))}; see --list")
        return chosen

    only, skipped = parse(names), parse(skip)
    wanted = {s.name for s in catalogue if (not only or {s.name, s.group} & only) and not {s.name, s.group} & skipped}
    for step in catalogue:
        if step.name in wanted:
            wanted.update(step.needs)
    wanted.add("device")  # every other step reads device.json
    return [step for step in catalogue if step.name in wanted]


# ----------------------------------------------------------------------------- running one step


def _child(step: Step, ctx: steps.Context, log_path: Optional[Path]) -> None:
    """In the step's process: own process group (in the pass's session), output to the log, the
    step, a status line. ``log_path`` None: started by exec (--child), the parent already did both."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)  # the pass's handlers are for the pass, not its steps
    if log_path is not None:
        os.setpgid(0, 0)
        descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        os.close(descriptor)
    status = {"status": "failed", "reason": "the step did not return"}
    try:
        if ctx.dry_run:
            _compile_with_eager_backend()
        step.run(ctx)
        status = {"status": "ok"}
    except steps.Skip as reason:
        status = {"status": "skipped", "reason": str(reason)}
    except BaseException as error:  # noqa: B902 - whatever stops the step is its report
        import traceback

        traceback.print_exc()
        status = {"status": "failed", "reason": f"{type(error).__name__}: {str(error)[:300]}"}
    finally:
        with open(ctx.rows_path, "a") as handle:
            handle.write(json.dumps(status) + "\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _compile_with_eager_backend() -> None:
    """Dry run: torch.compile traces with Dynamo but generates no code (Inductor's C++ build on a
    2-core CPU takes minutes); the compiled providers still run through torch.compile."""
    import torch

    compile_ = torch.compile

    def compile_eager(model=None, **options):
        options.update(backend="eager")
        options.pop("mode", None)
        return compile_(model, **options) if model is not None else compile_(**options)

    torch.compile = compile_eager


def run_step(step: Step, ctx_args: dict, limit: float) -> dict:
    """Start the step's process (fork, or exec with ``ctx_args["exec"]``), wait up to ``limit`` s,
    stop its whole process group; the step's record."""
    work = Path(ctx_args["work"])
    rows_path, log_path = work / "rows" / f"{step.name}.jsonl", work / "logs" / f"{step.name}.log"
    rows_path.unlink(missing_ok=True)
    ctx = steps.Context(ctx_args["dry_run"], work, rows_path)
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    if ctx_args["exec"]:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", step.name, "--work", str(work)]
        command += ["--dry-run"] * ctx_args["dry_run"] + ["--inject-slow-step"] * (step is SLOW)
        with open(log_path, "w") as log:
            pid = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, process_group=0).pid
    else:
        import torch

        if torch.cuda.is_initialized():
            raise RuntimeError("gpu_pass: CUDA was initialised in the parent; forked steps could not use it")
        pid = os.fork()
        if pid == 0:
            _child(step, ctx, log_path)
        try:
            os.setpgid(pid, pid)  # also here, so the group exists before the parent may signal it
        except (PermissionError, ProcessLookupError):
            pass  # the child got there first, or is gone already
    _RUNNING.add(pid)
    timed_out, wait_status, stopped, left = False, None, 0, 0
    try:
        while True:
            finished, wait_status = os.waitpid(pid, os.WNOHANG)
            if finished:
                break
            if time.perf_counter() - started > limit:
                timed_out, stopped = True, len(group_members(pid))
                wait_status = _stop_group(pid, grace=3.0)
                if wait_status is None:
                    wait_status = os.waitpid(pid, 0)[1]
                break
            time.sleep(0.05)
    finally:
        left = len(group_members(pid))
        _stop_group(pid, grace=0)  # what it left behind (decode processes, pytest workers) goes with it
        _RUNNING.discard(pid)
    seconds = time.perf_counter() - started
    rows, status = [], None
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            record = json.loads(line)
            if "row" in record:
                rows.append(record["row"])
            else:
                status = record
    if timed_out:
        status = {"status": "timeout",
                  "reason": f"ran past its {limit:.0f} s limit and was stopped with its process group "
                            f"({stopped} process{'es' if stopped != 1 else ''})"
                            + (f"; {len(rows)} row(s) measured before" if rows else "")}
    elif status is None:
        status = {"status": "failed",
                  "reason": f"the step's process ended without a report (wait status {wait_status})"}
    if left and not timed_out:
        status["left_behind"] = f"{left} process(es) of its group still ran when it ended; stopped"
    status["survivors"] = len(group_members(pid))  # after SIGKILL: 0, or the report says so
    log_tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
    return {"name": step.name, "group": step.group, "limit_s": round(limit, 1), "seconds": round(seconds, 1),
            **status, "rows": rows, "log_tail": log_tail}


def group_members(pgid: int) -> List[int]:
    """The processes (zombies aside) of process group ``pgid``, read from /proc (Linux)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            members.append(int(entry.name))
    return members


def _stop_group(pid: int, grace: float) -> Optional[int]:
    """SIGTERM to the step's process group and up to ``grace`` s for the step to end, then SIGKILL to
    whatever is left of the group; the step's wait status if it was reaped here."""
    status = None
    if grace > 0:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return None
        deadline = time.perf_counter() + grace
        while status is None and time.perf_counter() < deadline:
            finished, wait_status = os.waitpid(pid, os.WNOHANG)
            status = wait_status if finished else None
            time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.perf_counter() + 2.0  # SIGKILL is asynchronous: let the kernel finish the group
    while group_members(pid) and time.perf_counter() < deadline:
        time.sleep(0.02)
    return status


_RUNNING: set = set()  # process groups of the steps running now (one at a time)


def _stop_on_signal(signum, frame) -> None:
    """The pass is being stopped (SIGTERM, SIGINT, SIGHUP): stop the running step's group first."""
    for pid in list(_RUNNING):
        _stop_group(pid, grace=1.0)
    raise SystemExit(f"gpu_pass: stopped by signal {signum}; the running step was stopped with its group")


# ----------------------------------------------------------------------------- the pass


def write_reports(out: Path, report: dict, work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_pass.json", json.dumps(report, indent=1)), ("gpu_pass.md", render_markdown(report))):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, out / name)
    with tarfile.open(out / ".gpu_pass_logs.tar.gz.tmp", "w:gz") as archive:
        archive.add(work / "logs", arcname="logs")
    os.replace(out / ".gpu_pass_logs.tar.gz.tmp", out / "gpu_pass_logs.tar.gz")


def _preimport() -> None:
    """Imported once here, inherited by every forked step (none of these initialises CUDA)."""
    for module in ("numpy", "torch", "torchvision", "PIL.Image", "vito_fast", "vito_fast.data.loader",
                   "vito_fast.train.config", "vito_fast.reference.info_nce", "vito_fast.reference.attention_pool"):
        try:
            __import__(module)
        except Exception as error:  # the step that needs it reports it
            print(f"gpu_pass: could not import {module} ahead: {type(error).__name__}: {error}", flush=True)


def _fork_broke_cuda(record: dict) -> bool:
    text = f"{record.get('reason', '')} {record.get('log_tail', '')}"
    return record["status"] == "failed" and any(
        sign in text for sign in ("re-initialize CUDA in forked", "initialization error", "CUDA_ERROR_NOT_INITIALIZED"))


def run_pass(args) -> dict:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop_on_signal)
    work = Path(args.work or tempfile.mkdtemp(prefix="vito-gpu-pass-"))
    for folder in ("rows", "logs"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # toy sizes, reference paths, CPU loaders, even on a GPU host
    _preimport()
    chosen = select(args.only, args.skip, args.inject_slow_step)
    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "dry_run": args.dry_run,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "budget_s": args.budget, "work": str(work), "device": {}, "steps": []}
    started = time.perf_counter()
    ctx_args = {"dry_run": args.dry_run, "work": str(work), "exec": args.no_fork}
    for step in chosen:
        left = args.budget - (time.perf_counter() - started)
        limit = min(step.limit_s * args.time_scale, left)
        unmet = [f"{need} ({record['status']})" for record in report["steps"] for need in step.needs
                 if record["name"] == need and record["status"] != "ok"]
        if unmet:
            record = {"name": step.name, "group": step.group, "status": "skipped", "rows": [],
                      "reason": f"needs step {', '.join(unmet)}"}
        elif limit < min(MIN_START_S, step.limit_s * args.time_scale):
            record = {"name": step.name, "group": step.group, "status": "skipped", "rows": [],
                      "reason": f"the pass's budget of {args.budget:.0f} s is spent (rerun with --only {step.name})"}
        else:
            print(f"gpu_pass: {step.name} (limit {limit:.0f} s) ...", flush=True)
            record = run_step(step, ctx_args, limit)
            if step.name == "device" and not ctx_args["exec"] and _fork_broke_cuda(record):
                print("gpu_pass: CUDA does not work in forked steps here; starting each step by exec", flush=True)
                ctx_args["exec"] = True
                record = run_step(step, ctx_args, limit)
        print(f"gpu_pass: {step.name}: {record['status']} {record.get('reason', '')}"
              f"{' in %.1f s' % record['seconds'] if 'seconds' in record else ''}", flush=True)
        report["steps"].append(record)
        report["device"] = steps.Context(args.dry_run, work).device_info()
        report["steps_started_by"] = "exec" if ctx_args["exec"] else "fork"
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_reports(Path(args.out), report, work)
    return report


def print_plan(with_calls: bool, name: str = "pass") -> int:
    import gpu_plan

    wheel_set, make = gpu_plan.PLANS[name]
    record = gpu_plan.pack_record(wheel_set)
    catalogue = {step.name: step.limit_s for step in STEPS}
    table = gpu_plan.rows(make(record), record, catalogue, gpu_plan.tree_bytes())
    print(gpu_plan.markdown(table, record, catalogue, name))
    if with_calls:
        print("\n" + gpu_plan.calls_text(table))
    return 1 if gpu_plan.problems(table, catalogue, complete=name == "pass") else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:8]))
    parser.add_argument("--out", default="gpu_pass_out", help="folder for gpu_pass.json/.md and the logs")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU, reference paths")
    parser.add_argument("--only", help="comma-separated steps or groups (tests, kernels, loader, train)")
    parser.add_argument("--skip", help="comma-separated steps or groups to leave out")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole pass (default 600)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every step's time limit")
    parser.add_argument("--work", help="working folder (corpora, logs); default: a new temporary folder")
    parser.add_argument("--keep-work", action="store_true", help="keep the working folder")
    parser.add_argument("--list", action="store_true", help="list the steps and exit")
    parser.add_argument("--plan", nargs="?", const="pass", choices=("pass", "decoders", "decoders-dali"),
                        help="the device-tool calls as a table: carries, steps, limits, budgets, device time; "
                             "exit 1 when the plan does not fit the lease. 'pass' (the default): the GPU pass; "
                             "'decoders': issue #26's decoders under load, for a lease after the pass's; "
                             "'decoders-dali': the same for DALI's NVDEC (the pass's parts)")
    parser.add_argument("--calls", action="store_true", help="with --plan: each call as the device tool takes it")
    parser.add_argument("--no-fork", action="store_true",
                        help="start each step by exec (a fresh interpreter) instead of fork; chosen "
                             "automatically when CUDA fails in a forked step")
    parser.add_argument("--inject-slow-step", action="store_true", help=argparse.SUPPRESS)  # tests only
    parser.add_argument("--child", help=argparse.SUPPRESS)  # exec mode: run this one step here
    args = parser.parse_args(argv)
    if args.child:
        if args.dry_run:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        step = next(step for step in select(None, None, args.inject_slow_step) if step.name == args.child)
        work = Path(args.work)
        _child(step, steps.Context(args.dry_run, work, work / "rows" / f"{step.name}.jsonl"), None)
    if args.plan:
        return print_plan(args.calls, args.plan)
    if args.list:
        for step in select(args.only, args.skip, args.inject_slow_step):
            print(f"{step.name:20s} {step.group:8s} {step.limit_s:4.0f} s  {step.title}")
        return 0
    keep = args.keep_work or args.work is not None
    report = run_pass(args)
    print("\n" + render_markdown(report, summary_only=True), flush=True)
    if not keep:
        import shutil

        shutil.rmtree(report["work"], ignore_errors=True)
    print(f"gpu_pass: wrote {Path(args.out) / 'gpu_pass.json'} and gpu_pass.md", flush=True)
    return 1 if any(record["status"] == "failed" for record in report["steps"]) else 0


if __name__ == "__main__":
    sys.exit(main())
