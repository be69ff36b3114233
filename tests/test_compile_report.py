"""The sm_90 compile report (benches/bench_compile.py) as tests: every kernel variant that training
and the benches launch compiles for Hopper, with the specialisations real launches get, without
register spills and without duplicated tensor-core work. No GPU needed (Triton's bundled ptxas);
the report compiles in child processes, because Triton's interpreter (set by conftest.py on
machines without CUDA) replaces the kernels by objects that cannot be compiled.

The full report runs under the installed Triton; the GPU host's Triton (3.6.0) checks --quick
plus the cases whose variants spilled under it before their retiling (its full report takes
~100 s on 2 cores: benches/RESULTS.md). That Triton is installed once by pip into
~/.cache/vito_fast/triton-3.6.0 ($XDG_CACHE_HOME honoured; VITO_FAST_TRITON_36 names another
folder); the test is skipped only when pip cannot get it.
"""
from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benches" / "bench_compile.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_compile", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without_interpreter() -> dict:
    return {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}


def _compile_report():
    try:  # in child processes (one per core), as the interpreter is on here
        return _load_bench().compile_report()
    except RuntimeError as error:
        if "ptxas" in str(error) and "not found" in str(error).lower():
            pytest.skip("Triton's CUDA backend (ptxas) is not available here")
        raise


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The full report under the installed Triton, compiled once per test run: pytest-xdist workers
    share it through their common temporary folder (the first one compiles, the others wait)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _compile_report()
    shared = tmp_path_factory.getbasetemp().parent / "compile_report.json"
    with open(shared.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not shared.exists():
            shared.write_text(json.dumps(_compile_report()))
        return json.loads(shared.read_text())


def test_report_covers_what_training_and_the_benches_launch(report):
    cases = {case for row in report for case in row["cases"]}
    for n in (4096, 16384, 65536):
        # Training: k is the EMA target (no gradient); bench_info_nce: q and k need gradients;
        # deterministic (the default: two backward sweeps) or not (one sweep, atomic dq).
        for grads in ("", " dk"):
            for deterministic in ("", " det"):
                assert f"info_nce bf16 N=M={n} D=256{grads}{deterministic}" in cases
    for shape in ("512×2048×7×7", "512×1024×14×14"):
        for hidden in (0, 512):
            assert f"attention_pool bf16 {shape} hidden={hidden}" in cases
    parts = {(row["op"], row["part"]) for row in report}
    assert {part for op, part in parts if op == "info_nce"} == {
        "prologue", "fwd", "merge", "gq", "gk", "dk+dq", "dq"}
    assert {part for op, part in parts if op == "attention_pool"} == {"fwd", "bwd"}
    assert len({row["variant"] for row in report}) == len(report), "two variants share a name"


def _assert_no_spills(rows):
    for row in rows:
        assert row["spill_bytes"] == 0 and row["spill_load_bytes"] == 0, (
            f"Triton {row['triton']}, {row['variant']}: {row['registers']} registers, {row['spill_bytes']} B "
            f"spilled (launched by {row['cases'][:3]})")
        assert row["ctas_per_sm"] >= 1, f"{row['variant']}: {row['smem_bytes']} B of shared memory do not fit"


def _assert_no_duplicated_tensor_core_work(rows):
    for row in rows:
        if row["tensor_cores"]:
            assert row["wgmma"] > 0, f"{row['variant']}: no Hopper tensor-core MMA"
            assert row["wgmma"] == row["wgmma_expected"], (
                f"Triton {row['triton']}, {row['variant']}: {row['wgmma']} wgmma where "
                f"{row['wgmma_expected']} cover the tiles")
            assert row["wgmma_volume"] == row["dot_volume"], row["variant"]
        elif row["dot_volume"]:
            assert row["fma_expected"] <= row["fma"] < 1.5 * row["fma_expected"], row["variant"]


def test_every_launched_variant_compiles_without_spills(report):
    _assert_no_spills(report)


def test_no_duplicated_tensor_core_work(report):
    """Duplicated work: warpgroups computing the same rows of a dot's tile.

    Tensor cores (bf16/fp16): the PTX must hold exactly the wgmma count expected when the
    warpgroups split every dot's tile (M·N·K / (warpgroups·64·n·k) per dot, n×k the instruction
    shape of its layout), and the work of those instructions (Σ m·n·k × warpgroups, since each
    warpgroup runs all of the PTX) must equal the dots' M·N·K, which catches a split that the
    count alone would hide. fp32 (IEEE, FMA units): the fma.rn.f32 count per thread must stay
    below 1.5× M·N·K / threads (the softmax adds a few; a duplicated tile doubles it).
    """
    _assert_no_duplicated_tensor_core_work(report)


def test_quick_cases_launch_every_kernel_part(report):
    """--quick compiles a subset that still reaches every kernel, part and dtype of the report."""
    quick = set(_load_bench().QUICK_CASES)
    every = {case for row in report for case in row["cases"]}
    assert quick <= every, sorted(quick - every)
    quick_rows = [row for row in report if quick & set(row["cases"])]
    assert {(row["kernel"], row["part"]) for row in quick_rows} == {(row["kernel"], row["part"]) for row in report}
    assert {row["dtype"] for row in quick_rows} == {"bf16", "fp16", "fp32"}
    assert len(quick_rows) < len(report) / 4


def _run_bench(*arguments, timeout=600):
    return subprocess.run([sys.executable, str(BENCH), *arguments], env=_without_interpreter(),
                          capture_output=True, text=True, timeout=timeout)


def test_help_describes_the_options():
    run = _run_bench("--help", timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sm_90 compile report" in run.stdout
    for option in ("--json", "--quick", "--case", "--triton-path", "--workers"):
        assert option in run.stdout


def test_triton_path_without_triton_says_how_to_install_one(tmp_path):
    run = _run_bench("--quick", "--triton-path", str(tmp_path), timeout=120)
    assert run.returncode != 0
    assert str(tmp_path) in run.stderr and f"pip install --no-deps --target {tmp_path} triton==" in run.stderr


# The GPU host's Triton, and the launch cases whose variants spilled under it before their retiling
# (benches/RESULTS.md): the one sweep at D = 256, the symmetric gq with N not a multiple of 16, the
# fp32 gq (8, 80 and 8 B). --quick already holds the first and the last.
OTHER_TRITON = "3.6.0"
RETILED_CASES = ("^info_nce bf16 N=M=16384 D=256 dk$", "^info_nce (bf16|fp16) N=M=4100 D=256 sym det$",
                 "^info_nce fp32 N=M=4100 D=256 dk det$")


def _other_triton_folder() -> Optional[Path]:
    """Triton OTHER_TRITON installed by pip (no dependencies) into a cache folder, once; None when
    it is the installed Triton (the GPU host's)."""
    if importlib.metadata.version("triton") == OTHER_TRITON:
        return None
    if os.environ.get("VITO_FAST_TRITON_36"):
        return Path(os.environ["VITO_FAST_TRITON_36"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vito_fast"
    folder = cache / f"triton-{OTHER_TRITON}"
    if (folder / "triton" / "__init__.py").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"triton-{OTHER_TRITON}-", dir=cache))
    try:
        install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                  str(staging), f"triton=={OTHER_TRITON}"], capture_output=True, text=True,
                                 timeout=900)
        if install.returncode != 0:
            reason = (install.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"pip could not install triton=={OTHER_TRITON} into {folder}: {reason}")
        try:
            staging.rename(folder)  # atomic: a concurrent session's finished install stays
        except OSError:
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def test_quick_report_under_the_gpu_hosts_triton():
    """Triton 3.6.0 (the lent GPU host's) compiles --quick and the retiled cases without spills or
    duplicated tensor-core work, and the report says it was that Triton."""
    folder = _other_triton_folder()
    run = _run_bench("--json", "--quick", *[arg for case in RETILED_CASES for arg in ("--case", case)],
                     *([] if folder is None else ["--triton-path", str(folder)]))
    if "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip(f"Triton {OTHER_TRITON}'s CUDA backend (ptxas) is not available here")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(run.stdout)
    assert {row["triton"] for row in rows} == {OTHER_TRITON}
    cases = {case for row in rows for case in row["cases"]}
    assert set(_load_bench().QUICK_CASES) <= cases
    retiled = {(row["part"], row["dtype"], row["flags"]) for row in rows if "4100" in " ".join(row["cases"])}
    assert {("gq", "bf16", "sym N%16≠0"), ("gq", "fp16", "sym N%16≠0"), ("gq", "fp32", "N%16≠0")} <= retiled
    _assert_no_spills(rows)
    _assert_no_duplicated_tensor_core_work(rows)


_DUPLICATED = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import bench_compile
import vito_fast.kernels.info_nce as kernels

default_tiles = kernels._default_tiles
# The backward tiles before issue 15: 64 q rows × 64 k rows with 8 warps.
kernels._default_tiles = lambda dtype, interpreter=None: default_tiles(dtype, interpreter)._replace(
    bwd_q_rows=64, bwd_k_rows=64)
bench_compile.INFO_NCE_CASES = [("bf16", 16384, 256, False, True, True)]
bench_compile.ATTENTION_POOL_CASES = []
rows = [bench_compile.compile_variant(v) for v in bench_compile.launched_variants()]
print(json.dumps([{k: row[k] for k in ("part", "wgmma", "wgmma_expected", "wgmma_volume", "dot_volume")}
                  for row in rows]))
"""


def test_duplication_check_catches_the_old_backward_tiles():
    """The check above is not vacuous: 64×64 backward tiles with 8 warps put both warpgroups on
    the same 64 logit rows (issue 15: 36 wgmma where 20 did; with the chain rule's diagonal MMA in
    the epilogue, 40 where 24 do)."""
    run = subprocess.run([sys.executable, "-c", _DUPLICATED, str(BENCH.parent)], env=_without_interpreter(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {row["part"]: row for row in json.loads(run.stdout.strip().splitlines()[-1])}
    for part in ("gq", "gk"):
        assert (rows[part]["wgmma"], rows[part]["wgmma_expected"]) == (40, 24)
        # The 64×64×256 logit dot runs twice (once per warpgroup), the 64×256×64 gradient dot
        # and the 64×64×256 diagonal (chain rule) dot once each.
        assert 3 * rows[part]["wgmma_volume"] == 4 * rows[part]["dot_volume"]
    assert rows["fwd"]["wgmma"] == rows["fwd"]["wgmma_expected"]


def test_markdown_has_a_row_per_variant_and_the_roofline(report):
    bench = _load_bench()
    text = bench.markdown(report)
    assert sum(line.startswith("| info_nce ") or line.startswith("| attention_pool ")
               for line in text.splitlines()) == len(report)
    roofline = {row["what"]: row for row in bench.roofline()}
    info_16k = roofline["InfoNCE N=M=16k D=256 bf16 fwd+bwd, two sweeps"]
    # 10·N·M·D FLOPs at 990 TFLOP/s: 0.69 ms, a lower bound far below the 4.8 ms eager anchor.
    assert info_16k["tensor_ms"] == pytest.approx(10 * 16384**2 * 256 / 990e12 * 1e3)
    assert info_16k["H100_ms"] >= info_16k["tensor_ms"] and info_16k["eager_ms"] == 4.8
    one_sweep = roofline["InfoNCE N=M=16k D=256 bf16 fwd+bwd, one sweep"]
    assert one_sweep["tensor_ms"] == pytest.approx(8 * 16384**2 * 256 / 990e12 * 1e3)
    # Its dq̂ atomics: one N×D float32 slab per 64 k rows owned.
    assert one_sweep["atomic_bytes"] == 16384 // 64 * 16384 * 256 * 4 and one_sweep["atomic_ms"] > 0
    pool = roofline["attention pool B=512 2048×7×7 hidden=0 bf16 fwd+bwd"]
    assert pool["H200_ms"] == pytest.approx(pool["bytes"] / 4.8e12 * 1e3) and pool["eager_ms"] == 0.92
