"""The GPU pass as device-tool calls: what each carries, runs and may cost, checked against the lease.

    python benches/gpu_pass.py --plan            # the Markdown table and the checks (exit 1 if one fails)
    python benches/gpu_pass.py --plan --calls    # the same, then each call as the device tool takes it

A lent GPU comes for 15 minutes of device time in all: the machine's start, every call, and the idle
gaps between calls count, and it goes back (with everything staged on it) 30 s after a call ends.
So call 1 needs nothing staged and brings back the most (kernel tests in full, the kernels against
eager PyTorch, torch.compile and Inf-CL, the ResNet-50 step eager and compiled, and the frame store
through the torch device stage, alone and feeding the step); the parts of the optional packages
(benches/gpu_stage.py) follow back to back in short calls; the last call unpacks them and measures
the DALI half of the loader (their reports joined: torch ÷ DALI on the same card). A plan that
does not fit fails CI (tests/test_gpu_pass.py): a call whose steps' limits add up to more than its
budget, a call that carries over 60 MiB, or a whole plan over 13 minutes (2 of the 15 left for one
rerun).
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20

CARRY_LIMIT_MIB = 60
PLAN_LIMIT_S = 13 * 60
# What the lease costs besides the steps (device-tool README; the transfer rate is assumed).
START_S = 90            # a fresh machine's start ("a minute or more")
GAP_S = 20              # reading a reply and sending the next call; under the 30 s idle release
TRANSFER_S_PER_MIB = 0.25
TIMEOUT_MARGIN_S = 30   # timeout_s over setup + budget: the pass ends itself well inside the call
BUILD_S = 30            # pip install -e . (the C++ sampler) on the host
STAGE_S = 5             # copy one part out of the work tree
INSTALL_S = 30          # check, join and unpack the parts (~600 MB through Python's lzma)

PASS = "PYTHONUNBUFFERED=1 python3 benches/gpu_pass.py --out $OUT"
BUILD = "python3 -m pip install -q --no-build-isolation --no-deps -e ."
BUILD_IF_NEEDED = f"(python3 -c 'import vito_fast._C' 2>/dev/null || {BUILD})"
SITE = "/tmp/site"


@dataclass(frozen=True)
class Call:
    """One device-tool call: what it does before the pass (setup_s), the pass's steps and budget."""
    title: str
    steps: Tuple[str, ...] = ()
    budget_s: int = 0
    setup_s: int = STAGE_S
    part: Optional[int] = None           # the staged part it carries (index into the pack record)
    installs: bool = False               # unpacks every staged part into SITE before the pass
    call_one_wheels: bool = False        # carries the small wheels (Inf-CL) and installs them first


CALL_ONE = ("tests_kernels", "info_nce_16k", "info_nce_64k", "attention_pool_7x7", "train_eager", "compile_kernels",
            "train_compiled", "frame_store", "loader_store_torch", "train_loader_torch")
LAST = ("tests_loader", "frame_store", "loader_store", "train_loader")
# In the catalogue (``--only NAME`` runs them), not in this plan, and why.
LATER = {
    "info_nce_4k": "15 s for the frame store's torch stage in call 1; the InfoNCE goals are at 16k and 64k",
    "attention_pool_14x14": "15 s for the frame store's torch stage in call 1; training pools ResNet-50's 7×7 maps",
    "loader_store_cpu": "DALI on the host's cores: 15 s the plan does not have; the store's device stages are "
                        "compared with each other (torch ÷ DALI)",
    "video_corpus": "with video_pyav: 45 s the plan does not have; issue #26 measures the host's decode paths, "
                    "the PyAV workers as their baseline",
    "video_pyav": "see video_corpus",
    "video_dali_reader": "DALI's sequence reader was measured on an H200 (SPEC anchors); issue #26 compares decoders",
    "video_dali_decoder": "failed or hung on an H200 (SPEC); issue #26 owns GPU decoding",
    "video_pynvc": "PyNvVideoCodec (27 MB) would cost one more staging call; issue #26 owns GPU decoding",
    "decoders": "with video_corpus: 80 s the plan does not have; issue #26's decoder trials (DALI NVDEC, "
                "PyNvVideoCodec, torchcodec against PyAV)",
    "tests_decoders": "issue #26's plan of its own (`--plan decoders`): PyAV, PyNvVideoCodec and torchcodec in "
                      "one part",
    "video_corpus_large": "issue #26's plan (`--plan decoders`): 720p GOP-60 H.264",
    "decoder_rates": "issue #26's plan (`--plan decoders`): each verified decoder's loader with 0/4/8/16 cores "
                     "busy and held to 4 cores",
    "train_vit": "300 s the plan does not have (ViT-S/16 and ViT-B/16, eager and compiled, issue 28); "
                 "`--only train_vit` runs it in a call of its own, ResNet-50's eager step beside it",
    "compile_report": "CPU work: `python benches/bench_compile.py --triton-path DIR` compiles with the host's Triton here",
}


# Issue #26's plan (``--plan decoders``), for a lease after the pass's: one part (PyAV, PyNvVideoCodec,
# torchcodec), unpacked, then the decoder tests, both corpora and every verified decoder under load.
DECODERS = ("tests_decoders", "video_corpus", "video_corpus_large", "decoder_rates")
DALI_DECODERS = ("video_corpus", "video_corpus_large", "decoder_rates")
RECORDS = {"loader": (".gpu", "benches/gpu_stage.json"), "decoders": (".gpu/decoders", "benches/gpu_stage_decoders.json")}


def pack_record(which: str = "loader") -> dict:
    """The parts of the last pack of a wheel set: its parts.json where this machine packed, else the
    record committed in benches/."""
    folder, committed = RECORDS[which]
    for path in (ROOT / folder / "parts.json", ROOT / committed):
        if path.is_file():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"gpu_plan: no pack record ({committed}); run `python benches/gpu_stage.py pack "
                            f"--set {which}`")


def parts_folder(record: dict) -> str:
    """Where a set's parts lie in the checkout (a record without "set" is the pass's own)."""
    return RECORDS[record.get("set", "loader")][0]


def plan(record: dict) -> List[Call]:
    """Call 1, one staging call per part but the last, and the last call (last part, install, loader)."""
    parts = len(record["parts"])
    calls = [Call("kernels, kernel tests, ResNet-50 step, frame store through the torch stage (nothing staged)",
                  CALL_ONE, budget_s=388, setup_s=BUILD_S, call_one_wheels=True)]
    calls += [Call(f"stage part {index + 1} of {parts}", part=index) for index in range(parts - 1)]
    calls.append(Call(f"stage part {parts} of {parts}, unpack, loader half (DALI)", LAST, budget_s=118,
                      setup_s=STAGE_S + INSTALL_S, part=parts - 1, installs=True))
    return calls


def decoders_plan(record: dict) -> List[Call]:
    """Issue #26's plan: its parts but the last staged, then the last part, install, and the steps."""
    parts = len(record["parts"])
    calls = [Call(f"stage decoder part {index + 1} of {parts}", part=index) for index in range(parts - 1)]
    calls.append(Call("unpack PyAV, PyNvVideoCodec, torchcodec; decoder tests; 256p and 720p corpora; every "
                      "verified decoder under load (issue #26)", DECODERS, budget_s=485,
                      setup_s=INSTALL_S + BUILD_S, part=parts - 1, installs=True))
    return calls


def dali_decoders_plan(record: dict) -> List[Call]:
    """DALI's NVDEC through the loader beside PyAV (issue #26): the pass's own parts (DALI and PyAV) staged,
    then both corpora and ``decoder_rates`` (PyNvVideoCodec and torchcodec: ``decoders``)."""
    parts = len(record["parts"])
    calls = [Call(f"stage part {index + 1} of {parts}", part=index) for index in range(parts - 1)]
    calls.append(Call("stage the last part, unpack; 256p and 720p corpora; DALI's NVDEC and PyAV under load "
                      "(issue #26)", DALI_DECODERS, budget_s=395, setup_s=STAGE_S + INSTALL_S + BUILD_S,
                      part=parts - 1, installs=True))
    return calls


PLANS = {"pass": ("loader", plan), "decoders": ("decoders", decoders_plan),
         "decoders-dali": ("loader", dali_decoders_plan)}


def tree_bytes(root: Path = ROOT) -> int:
    """What travels with every call: tracked and untracked-not-ignored files of the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((root / name).stat().st_size for name in listed if name and (root / name).is_file())


def carried(call: Call, record: dict) -> List[Tuple[str, int]]:
    """(path, bytes) of what the call carries besides the tree: its part (the pack record's size) with
    parts.json, or call 1's small wheels (sizes bounded from above: CI has no .gpu/)."""
    paths, folder = [], parts_folder(record)
    if call.part is not None:
        part = record["parts"][call.part]
        paths += [(f"{folder}/parts.json", 4096), (f"{folder}/{part['name']}", part["bytes"])]
    if call.call_one_wheels:
        paths.append((".gpu/call1", 64 * 1024))
    return paths


def limits(steps: Sequence[str], catalogue: Dict[str, float]) -> float:
    """Σ of the steps' time limits, with the device probe that every pass runs first."""
    return catalogue["device"] + sum(catalogue[name] for name in steps)


def command(call: Call, record: dict) -> str:
    parts, folder = [], parts_folder(record)
    if call.part is not None:
        parts.append(f"python3 benches/gpu_stage.py stage {folder}/{record['parts'][call.part]['name']}")
    if call.installs:
        parts.append(f"python3 benches/gpu_stage.py install {SITE} --parts {folder}/parts.json")
    if call.call_one_wheels:
        parts.append(f"python3 -m pip install -q --no-index --no-deps --target {SITE} .gpu/call1/*.whl")
    if call.steps:
        build = BUILD if call.call_one_wheels else BUILD_IF_NEEDED
        run = f"{build} && PYTHONPATH={SITE} {PASS} --only {','.join(call.steps)} --budget {call.budget_s}"
        # Staging and install report in one line and never stop the pass: a step that needs what is
        # missing says so in the report.
        return "; ".join(parts + [run])
    return " && ".join(parts)


def rows(calls: List[Call], record: dict, catalogue: Dict[str, float], tree: int) -> List[dict]:
    table = []
    for number, call in enumerate(calls, 1):
        paths = carried(call, record)
        carry_bytes = tree + sum(size for _, size in paths)
        assumed = call.setup_s + call.budget_s + TRANSFER_S_PER_MIB * carry_bytes / MIB
        table.append({"call": number, "title": call.title, "carry_mib": carry_bytes / MIB, "steps": call.steps,
                      "limits_s": limits(call.steps, catalogue) if call.steps else 0, "budget_s": call.budget_s,
                      "assumed_s": assumed, "timeout_s": int(call.setup_s + call.budget_s + TIMEOUT_MARGIN_S),
                      "carry": [path for path, _ in paths], "command": command(call, record)})
    return table


def total_s(table: List[dict]) -> float:
    """The lease: the start, every call's assumed time, and the idle gaps between calls."""
    return START_S + sum(row["assumed_s"] for row in table) + GAP_S * (len(table) - 1)


def problems(table: List[dict], catalogue: Dict[str, float], complete: bool = True) -> List[str]:
    """What does not fit the lease; ``complete``: also every step of the catalogue that is neither
    planned nor in LATER (the pass's plan; issue #26's runs a few steps only)."""
    found = []
    for row in table:
        if row["limits_s"] > row["budget_s"]:
            found.append(f"call {row['call']}: its steps' limits add up to {row['limits_s']:.0f} s, over its "
                         f"budget of {row['budget_s']} s")
        if row["carry_mib"] > CARRY_LIMIT_MIB:
            found.append(f"call {row['call']} carries {row['carry_mib']:.1f} MiB, over {CARRY_LIMIT_MIB} MiB")
    if total_s(table) > PLAN_LIMIT_S:
        found.append(f"the plan takes {total_s(table):.0f} s of device time, over {PLAN_LIMIT_S} s")
    planned = {step for row in table for step in row["steps"]}
    for name in catalogue if complete else ():
        if name not in planned and name not in LATER and name != "device":
            found.append(f"step {name} is neither in a call nor in LATER (with the reason)")
    return found


def markdown(table: List[dict], record: dict, catalogue: Dict[str, float], name: str = "pass") -> str:
    complete = name == "pass"
    lines = [f"{'GPU pass plan' if complete else 'Plan ' + repr(name)}: {len(table)} call(s); {len(record['parts'])} parts of "
             f"{record['compressed_bytes'] / 2**20:.0f} MiB xz ({record['unpacked_bytes'] / 2**20:.0f} MiB unpacked, "
             f"packed {record['date']}); each call also carries the working tree.", "",
             "| call | what | carries MiB | steps (after `device`) | Σ step limits s | budget s | GPU time assumed s "
             "| timeout_s |", "|---:|---|---:|---|---:|---:|---:|---:|"]
    for row in table:
        lines.append(f"| {row['call']} | {row['title']} | {row['carry_mib']:.1f} | {', '.join(row['steps']) or '–'} | "
                     f"{row['limits_s']:.0f} | {row['budget_s']} | {row['assumed_s']:.0f} | {row['timeout_s']} |")
    lines += ["", f"Whole plan: {START_S} s start + {sum(r['assumed_s'] for r in table):.0f} s of calls + "
                  f"{len(table) - 1} × {GAP_S} s gaps = **{total_s(table):.0f} s** of {PLAN_LIMIT_S} s "
                  f"({PLAN_LIMIT_S // 60} of the 15 device minutes; the rest is for one rerun)."]
    if complete:
        lines += ["", "Not in this plan (`--only NAME` runs them): " + "; ".join(f"{k} ({v})" for k, v in LATER.items())]
    found = problems(table, catalogue, complete)
    lines += ["", "Checks: " + ("all pass." if not found else "FAIL\n" + "\n".join(f"- {p}" for p in found))]
    return "\n".join(lines)


def calls_text(table: List[dict]) -> str:
    """Each call as the device tool's run takes it, in order; then status and give_back."""
    lines = ["Device-tool calls, back to back (the machine goes back 30 s after a call, and staged parts with it):"]
    for row in table:
        lines.append("run " + json.dumps({"timeout_s": row["timeout_s"], "command": row["command"],
                                          **({"carry": row["carry"]} if row["carry"] else {})}))
    lines.append("then: status; with what is left, rerun a step that timed out (`--only NAME`); give_back; "
                 "`python benches/gpu_pass_report.py <call 1's>/gpu_pass.json <last call's>/gpu_pass.json --out DIR` "
                 "joins the reports (torch ÷ DALI where both ran on the same card).")
    return "\n".join(lines)
