"""sm_90 compile report: every Triton kernel variant that training and the benches launch, compiled
for Hopper on any machine (no GPU needed), beside a roofline of the goal shapes.

    python benches/bench_compile.py              # the Markdown tables
    python benches/bench_compile.py --json       # the variant rows as JSON
    python benches/bench_compile.py --quick      # a few cases that launch every kernel part
    python benches/bench_compile.py --triton-path /work/triton36   # compiled by another Triton
    vito-fast bench compile                      # the same report through pytest-benchmark

From another script (e.g. a GPU pass): ``compile_report(workers=None, *, quick=False, cases=(),
triton_path=None) -> list[dict]`` (one row per variant: variant, registers, spill_bytes,
smem_bytes, ctas_per_sm, wgmma, wgmma_expected, cases, triton, ...), ``roofline() -> list[dict]``
(one row per goal shape) and ``markdown(rows, roofline_rows=None) -> str``.

**Which Triton.** The one this interpreter imports, or, with ``triton_path`` (``--triton-path
DIR``), the one installed in DIR by ``pip install --no-deps --target DIR triton==X.Y.Z``: the
report then runs in a child process with DIR first on PYTHONPATH, so both the launch
specialisation and the compilation (and the bundled ptxas) are that Triton's. Each row names the
Triton version that compiled it.

**Which variants.** The launchers in kernels/ run on meta tensors (no memory, no device) for every
case in ``INFO_NCE_CASES`` / ``ATTENTION_POOL_CASES``, with the arguments vito_fast.ops gives them
(InfoNCE: normalize=True, float τ, default labels, mean, q always needing a gradient; labels
given as a tensor add a per-tile label load the report does not compile); each
``kernel[grid](...)`` call is captured instead of launched. Triton's own binder turns those arguments into what a real launch specialises on:
signature, constexprs (ints equal to 1 become constants) and divisibility hints (pointers and ints
divisible by 16 get ``tt.divisibility = 16``; meta tensors sit at address 0, as fresh CUDA
allocations are aligned). Identical specialisations are merged; each is compiled once with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` and the launch's num_warps and
num_stages, and its PTX is assembled by Triton's bundled ``ptxas -v`` with the flags Triton uses.

**Columns.** registers and spill bytes (stores) from ptxas; smem = Triton's dynamic shared memory
plus ptxas' static; CTAs/SM = min(2048 threads / threads per CTA; registers: 4 partitions ×
⌊16384 / (⌈regs·32 / 256⌉·256)⌋ warps / warps per CTA; smem: ⌊233472 / (smem + 1024)⌋, i.e. 228 KB
per SM and 1 KB reserved per CTA; 32). wgmma = ``wgmma.mma_async`` instructions in the PTX (each
warpgroup of 4 warps runs all of them); expected = Σ over the Hopper dots of the TTGIR
(``ttng.warp_group_dot``, M×N×K) of M·N·K / (warpgroups · 64 · n · k), n×k the instruction shape
of the dot's MMA layout: the count when the warpgroups split each dot's tile. More than expected
means warpgroups compute the same rows (duplicated tensor-core work). fp32 dots (IEEE) run on FMAs:
the column shows ``fma.rn.f32`` instructions against M·N·K / threads.

**Roofline** (a lower bound, not a prediction): time ≥ max(tensor FLOPs / 990 TFLOP/s, exp2 count
/ MUFU rate, HBM bytes / bandwidth). H100 SXM: 990 TFLOP/s dense bf16, 3.35 TB/s, 132 SMs × 16
exp2/clk × 1.98 GHz = 4.18 T exp2/s; H200: the same chip with 4.8 TB/s. InfoNCE (bf16, D = 256,
non-symmetric, q and k needing gradients, as bench_info_nce.py runs it), one row per backward:
"two sweeps" (deterministic=True: forward 2·N·M·D, then a dq and a dk sweep that each recompute the
logits, 4 + 4: 10·N·M·D; exp2 3·N·M) and "one sweep" (deterministic=False: a single backward sweep
over k tiles, 6·N·M·D: 8·N·M·D; exp2 2·N·M; plus float32 atomic adds of dq̂, one N×D slab per
BLOCK k rows owned: (M / 64)·N·D·4 bytes through L2, timed at an assumed 5.5 TB/s, unmeasured).
HBM bytes: each kernel reads q and k once plus its O(N) vectors and writes its outputs (dq, dk in
bf16; the one sweep's N×D float32 dq̂ zeroed, then read by the dq kernel). "no overlap" = tensor +
exp (+ atomic) time: the kernels' cost if none of them overlapped, still without memory stalls.
Attention pooling (B = 512, bf16, fwd+bwd of pooled, as bench_attention_pool.py runs it): bytes
and FLOPs = its ``compulsory_bytes`` / ``compulsory_flops``
(h read by the forward and by the backward, dh written once); "as launched" = ``attention_pool_kernels``:
the kernels of one step (the pooling fwd and bwd; with a hidden layer also the cuBLAS z and dW1 GEMMs
and the Triton dh GEMM), each tensor a kernel touches counted once as HBM traffic, each kernel at the
larger of its tensor and HBM times, back to back; "HBM share" = compulsory bytes ÷ that time ÷
bandwidth (the goal: ≥ 60 %), an upper bound: no kernel streams at 100 %. Neither models launch
overheads or occupancy (InfoNCE: at most 6 launches fwd+bwd, tests/test_info_nce.py). The measured
anchors (SPEC.md) are H200 figures, so the ratios divide them by the H200 roofline.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import triton

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # bench_attention_pool's traffic model, also when imported from elsewhere

from bench_attention_pool import compulsory_bytes, compulsory_flops  # noqa: E402

# Peaks (dense, per chip) and H100 occupancy limits.
TENSOR_FLOPS = 990e12
EXP2_PER_S = 132 * 16 * 1.98e9
HBM = {"H100": 3.35e12, "H200": 4.8e12}
REGS_PER_PARTITION, PARTITIONS, SMEM_PER_SM, SMEM_RESERVED, THREADS_PER_SM = 16384, 4, 233472, 1024, 2048

# Measured anchors (SPEC.md, one H200) and the goals, fwd+bwd, bf16.
INFO_NCE_EAGER_MS = {4096: 1.5, 16384: 4.8, 65536: 75.7}
INFO_NCE_COMPILE_MS = {16384: 2.5}
ATTENTION_POOL_EAGER_MS = {(2048, 7, 7, 0): 0.92}

GOAL_N = (4096, 16384, 65536)
# The one-sweep InfoNCE backward: k rows owned per program (each adds an N×D float32 slab of dq̂
# with atomics), and the rate assumed for those float32 reductions in L2 (H100: ~5.5 TB/s of L2
# read bandwidth measured by chips-and-cheese; reductions are not faster). Not measured here.
INFO_NCE_DK_ROWS = 64
L2_ATOMIC_BYTES_PER_S = 5.5e12
GOAL_D = 256
GOAL_POOL_SHAPES = ((2048, 7, 7), (1024, 14, 14))
GOAL_HIDDEN = (0, 512)
GOAL_POOL_BATCH = 512

# (dtype, N = M, D, symmetric, k needs a gradient, deterministic): training is bf16, D = 256,
# non-symmetric, k without gradient (EMA target); the benches add k with gradient (one backward
# sweep, or two when deterministic), D = 128 and the three sizes; fp16/fp32, symmetric, D = 512
# (chunked D) and N = 4100 (not a multiple of 16, so N and M lose their divisibility hint) are the
# API's other paths, launched by the CUDA tests.
INFO_NCE_SIZES = [(n, d) for n in GOAL_N for d in (128, 256)] + [(16384, 512), (4100, 256)]
INFO_NCE_CASES = [(dtype, n, d, sym, need_k, det) for dtype in ("bf16", "fp16", "fp32") for n, d in INFO_NCE_SIZES
                  for sym in (False, True) for need_k in (False, True) for det in (False, True)]
# (dtype, B, C, H, W, hidden, channels_last): training and the benches feed channels_last bf16.
ATTENTION_POOL_CASES = [(dtype, GOAL_POOL_BATCH, c, hh, ww, hidden, channels_last)
                        for dtype in ("bf16", "fp16", "fp32") for c, hh, ww in GOAL_POOL_SHAPES
                        for hidden in GOAL_HIDDEN for channels_last in (True, False)]
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def info_nce_case_name(dtype: str, n: int, d: int, symmetric: bool, need_k: bool, deterministic: bool) -> str:
    return (f"info_nce {dtype} N=M={n} D={d}{' sym' if symmetric else ''}"
            f"{' dk' if need_k else ''}{' det' if deterministic else ''}")


def attention_pool_case_name(dtype: str, batch: int, channels: int, height: int, width: int, hidden: int,
                             channels_last: bool) -> str:
    return (f"attention_pool {dtype} {batch}×{channels}×{height}×{width} hidden={hidden}"
            f"{'' if channels_last else ' NCHW'}")


# --quick: cases that between them launch every kernel part (InfoNCE prologue, forward, column
# merge, gq, gk with D resident and chunked, the one sweep's dk+dq and dq kernels; attention
# pooling linear and MLP, channels_last and NCHW, and the dh GEMM) in each dtype's tile family,
# with training's and the benches' bf16 shapes among them: 27 of the 150 variants.
QUICK_CASES = (
    "info_nce bf16 N=M=16384 D=256 det",  # training: k is the EMA target
    "info_nce bf16 N=M=16384 D=256 dk",  # bench: one sweep (dk+dq, dq), atomic loss
    "info_nce bf16 N=M=16384 D=256 sym dk det",  # column merge, gk on D chunks
    "info_nce fp16 N=M=4096 D=128 dk det",
    "info_nce fp32 N=M=4100 D=256 dk det",  # FMA dots, chunked D, N without a divisibility hint
    "attention_pool bf16 512×2048×7×7 hidden=512",  # MLP and the dh GEMM, channels_last
    "attention_pool bf16 512×1024×14×14 hidden=0 NCHW",
    "attention_pool fp32 512×1024×14×14 hidden=512 NCHW",
)


def case_selector(quick: bool = False, patterns: Sequence[str] = ()) -> Callable[[str], bool]:
    """Which launch cases a report compiles: all by default; with quick, QUICK_CASES; with
    patterns (regular expressions searched in the case name), the matching ones too."""
    compiled = [re.compile(pattern) for pattern in patterns]
    if not quick and not compiled:
        return lambda case: True
    return lambda case: (quick and case in QUICK_CASES) or any(p.search(case) for p in compiled)


# ---------------------------------------------------------------- capturing the launches

class _Recorder:
    """Stands in for a @triton.jit kernel: kernel[grid](*args, **kwargs) records the call."""

    def __init__(self, fn, calls: list, case: str):
        self.fn, self.calls, self.case = fn, calls, case

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.fn, self.case, grid, args, kwargs))


@contextlib.contextmanager
def _capture(module, calls: list, case: str):
    names = [name for name in dir(module) if name.endswith("_kernel")]
    kernels = {name: getattr(module, name) for name in names}
    for name, fn in kernels.items():
        setattr(module, name, _Recorder(fn, calls, case))
    try:
        yield
    finally:
        for name, fn in kernels.items():
            setattr(module, name, fn)


def _info_nce_launches(calls: list) -> None:
    from vito_fast.kernels import info_nce as kernels

    meta = dict(device="meta")
    for dtype, n, d, symmetric, need_k, deterministic in INFO_NCE_CASES:
        case = info_nce_case_name(dtype, n, d, symmetric, need_k, deterministic)
        q = torch.empty(n, d, dtype=TORCH_DTYPES[dtype], **meta)
        k = torch.empty(n, d, dtype=TORCH_DTYPES[dtype], **meta)
        with _capture(kernels, calls, case):
            # As vito_fast.ops launches them: float τ, default labels, normalize, mean.
            _, state = kernels.info_nce_fwd(q, k, 0.1, symmetric=symmetric, deterministic=deterministic)
            kernels.info_nce_bwd(q, k, state, torch.empty((), **meta), need_q=True, need_k=need_k,
                                 deterministic=deterministic)


def _attention_pool_launches(calls: list) -> None:
    from vito_fast.kernels import attention_pool as kernels

    for dtype, batch, channels, height, width, hidden, channels_last in ATTENTION_POOL_CASES:
        case = attention_pool_case_name(dtype, batch, channels, height, width, hidden, channels_last)
        like = dict(device="meta", dtype=TORCH_DTYPES[dtype])
        h = torch.empty(batch, channels, height, width, **like)
        if channels_last:
            h = h.to(memory_format=torch.channels_last)
        w1 = torch.empty(hidden, channels, **like) if hidden else None
        b1 = torch.empty(hidden, **like) if hidden else None
        w2 = torch.empty(hidden or channels, **like)
        with _capture(kernels, calls, case):
            _, attn, pooled32, z = kernels.attention_pool_fwd(h, w1, b1, w2)
            # Training and the benches differentiate pooled only (attn is logged, detached).
            kernels.attention_pool_bwd(h, w1, w2, z, attn, pooled32, torch.empty(batch, channels, **like), None)


def launched_variants(wanted: Optional[Callable[[str], bool]] = None) -> List[dict]:
    """The distinct specialisations of every captured launch of the wanted cases: kernel,
    signature, constexprs, attributes and options as a real launch would compile them, with the
    cases that launch it."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    wanted = case_selector() if wanted is None else wanted
    calls: list = []
    _info_nce_launches(calls)  # every case on meta tensors: cheap, then filtered
    _attention_pool_launches(calls)
    variants: Dict[str, dict] = {}
    for fn, case, _grid, args, kwargs in calls:
        if not wanted(case):
            continue
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
        key = repr((fn.__name__, sorted(signature.items()), sorted(constexprs.items()),
                    sorted(attrs.items()), options.num_warps, options.num_stages))
        variant = variants.setdefault(key, dict(fn=fn, signature=signature, constexprs=constexprs,
                                                attrs=attrs, options=options, cases=[]))
        variant["cases"].append(case)
    return list(variants.values())


# ---------------------------------------------------------------- compiling and reading sm_90 code

_WGMMA = re.compile(r"wgmma\.mma_async\.\S*?\.m(\d+)n(\d+)k(\d+)\.")
_TT_DOT = re.compile(r"tt\.dot .*?: tensor<(\d+)x(\d+)x\w+.*?> \* tensor<(\d+)x(\d+)x\w+")
_FMA = re.compile(r"\bfma\.rn\.f32\b")
_ATOMIC = re.compile(r"\b(?:red|atom)\.global\.\S*?add\S*")
# TTGIR: a Hopper dot (A: M×K, result M×N in an MMA layout) and the layouts' instruction shapes.
_WG_DOT = re.compile(r"warp_group_dot .*?: (?:!ttg\.memdesc|tensor)<(\d+)x(\d+)x.*?"
                     r"-> tensor<(\d+)x(\d+)xf32, (#mma\d*)>")
_MMA_LAYOUT = re.compile(r"^(#mma\d*) = #ttg\.nvidia_mma<\{.*?instrShape = \[\d+, (\d+), (\d+)\]", re.M)


def expected_wgmma(ttgir: str, warpgroups: int) -> int:
    """wgmma instructions per warpgroup if each Hopper dot's M×N×K were split across the
    warpgroups, each issuing m64·nN·kK instructions of its layout's instruction shape."""
    instr = {name: (int(n), int(k)) for name, n, k in _MMA_LAYOUT.findall(ttgir)}
    total = 0
    for m, k, _, n, layout in _WG_DOT.findall(ttgir):
        instr_n, instr_k = instr[layout]
        total += math.ceil(int(m) * int(n) * int(k) / (warpgroups * 64 * instr_n * instr_k))
    return total


def _ptxas_report(ptx: str, log: str = "") -> Dict[str, int]:
    """Registers, spills and static smem from ptxas -v: the log Triton's own ptxas run printed, or
    (the cubin came from Triton's cache) a second run with the flags Triton uses."""
    from triton.backends.nvidia.compiler import get_ptxas

    if "Used" not in log:
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as source:
            source.write(ptx)
            source.flush()
            log = subprocess.run([get_ptxas(90).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                                  "--gpu-name=sm_90a", source.name, "-o", os.devnull],
                                 capture_output=True, text=True, check=True).stderr
    number = lambda pattern: int(re.search(pattern, log).group(1)) if re.search(pattern, log) else 0  # noqa: E731
    return dict(registers=number(r"Used (\d+) registers"), spill_bytes=number(r"(\d+) bytes spill stores"),
                spill_load_bytes=number(r"(\d+) bytes spill loads"), static_smem=number(r"(\d+) bytes smem"))


def ctas_per_sm(registers: int, num_warps: int, smem: int) -> int:
    """Resident CTAs per H100 SM, the least of the thread, register, shared-memory and CTA caps."""
    regs_per_warp = math.ceil(registers * 32 / 256) * 256
    by_regs = PARTITIONS * (REGS_PER_PARTITION // regs_per_warp) // num_warps
    by_smem = SMEM_PER_SM // (smem + SMEM_RESERVED)
    return max(0, min(THREADS_PER_SM // (32 * num_warps), by_regs, by_smem, 32))


def _describe(variant: dict) -> dict:
    """Names and tiles of one variant, read off its kernel and constexprs."""
    fn, names = variant["fn"], variant["fn"].arg_names
    consts = {names[path[0]]: value for path, value in variant["constexprs"].items()}
    dtype = next(ty[1:] for name, ty in variant["signature"].items()
                 if name in ("Q_ptr", "ColPartial_ptr", "H_ptr", "GradZ_ptr"))
    if fn.__name__.startswith("_info_nce"):
        op = "info_nce"
        part, tiles = {"_info_nce_prologue_kernel": ("prologue", ("BLOCK_R", "BLOCK_D")),
                       "_info_nce_fwd_kernel": ("fwd", ("BLOCK_M", "BLOCK_N", "BLOCK_D")),
                       "_info_nce_col_merge_kernel": ("merge", ("BLOCK_C",)),
                       "_info_nce_dq_kernel": ("dq", ("BLOCK_R", "BLOCK_D"))}.get(fn.__name__, (None, None))
        if fn.__name__ == "_info_nce_bwd_kernel":  # gq / gk sweeps, or the one-sweep dk + dq̂
            part = "gq" if consts["GRAD_Q"] else "dk+dq" if consts["ATOMIC_DQ"] else "gk"
            tiles = ("BLOCK_OWN", "BLOCK_OTHER", "BLOCK_D", "BLOCK_DOUT") + (("BLOCK_DQ",) if consts["ATOMIC_DQ"] else ())
        rows = "N" if "N" in names else "M"  # the merge kernel's rows are M = N columns
        n_hinted = variant["attrs"].get((names.index(rows),)) or rows in consts
        flags = [flag for flag, on in (("sym", consts.get("SYMMETRIC")), ("atomic-loss", consts.get("ATOMIC_LOSS")),
                                       ("zero-loss", consts.get("ZERO_LOSS")),
                                       ("single-D", consts.get("SINGLE_D")), ("N%16≠0", not n_hinted)) if on]
    else:
        op = "attention_pool"
        part = "fwd" if "fwd" in fn.__name__ else "bwd"
        if fn.__name__ == "_attention_pool_dh_kernel":  # the MLP backward's dh GEMM
            tiles = ("BLOCK_M", "BLOCK_C", "BLOCK_HID")
            flags = ["dh-gemm", "NHWC" if consts.get("stride_dh_chan") == 1 else "NCHW"]
        else:
            tiles = ("BLOCK_N", "BLOCK_C", "BLOCK_HID")
            flags = ["mlp" if consts["HAS_MLP"] else "linear",
                     "NHWC" if consts.get("stride_h_chan") == 1 else "NCHW"]
    blocks = "×".join(str(consts[name]) for name in tiles)
    return dict(op=op, kernel=fn.__name__, part=part, dtype=dtype, flags=" ".join(flags), blocks=blocks,
                variant=" ".join([op, part, dtype, *flags, blocks, f"w{variant['options'].num_warps}",
                                  f"s{variant['options'].num_stages}"]))


def compile_variant(variant: dict) -> dict:
    """Compile one variant for sm_90 and read registers, spills, smem and the MMA work."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    options = variant["options"]
    log = io.StringIO()
    with triton.knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        triton.knobs.nvidia.dump_ptxas_log = True  # Triton prints its ptxas -v log when it runs ptxas
        kernel = triton.compile(ASTSource(variant["fn"], variant["signature"], variant["constexprs"],
                                          variant["attrs"]), target=GPUTarget("cuda", 90, 32), options=options.__dict__)
    ptx = kernel.asm["ptx"]
    report = _ptxas_report(ptx, log.getvalue())
    wgmma_shapes = [tuple(map(int, shape)) for shape in _WGMMA.findall(ptx)]
    warpgroups = max(options.num_warps // 4, 1)
    wgmma_volume = sum(m * n * k for m, n, k in wgmma_shapes)
    dots = [tuple(map(int, dims)) for dims in _TT_DOT.findall(kernel.asm["ttir"])]
    dot_volume = sum(m * k * n for m, k, _, n in dots)
    threads = 32 * options.num_warps
    smem = kernel.metadata.shared + report["static_smem"]
    row = _describe(variant)
    row.update(report, num_warps=options.num_warps, num_stages=options.num_stages, smem_bytes=smem,
               ctas_per_sm=ctas_per_sm(report["registers"], options.num_warps, smem),
               wgmma=len(wgmma_shapes), wgmma_expected=expected_wgmma(kernel.asm["ttgir"], warpgroups),
               dot_volume=dot_volume, wgmma_volume=wgmma_volume * warpgroups,
               fma=len(_FMA.findall(ptx)), fma_expected=0 if wgmma_shapes else dot_volume // threads,
               atomics=len(_ATOMIC.findall(ptx)), atomic_kinds=sorted(set(_ATOMIC.findall(ptx))),
               tensor_cores=row["dtype"] != "fp32" and dot_volume > 0,
               cases=variant["cases"], triton=triton.__version__, compile_s=time.perf_counter() - start)
    return row


def compile_report(workers: Optional[int] = None, *, quick: bool = False, cases: Sequence[str] = (),
                   triton_path: Optional[str] = None) -> List[dict]:
    """One row per launched variant, sorted by op, part and dtype (see the module docstring).

    quick: only QUICK_CASES; cases: regular expressions, the launch cases they match (added to
    quick's). triton_path: a folder holding another Triton (``pip install --no-deps --target
    DIR triton==X.Y.Z``) that compiles the report instead of the one imported here.

    workers > 1 (default: one per core, at most 8) compiles in that many processes: forked from
    this one, or fresh ones when this process has initialised CUDA (each taking every workers-th
    variant). Under TRITON_INTERPRET=1 the kernels are interpreter objects that cannot be
    compiled, and another Triton cannot be imported beside this one: the report then runs in a
    child process (without that variable; with triton_path first on its PYTHONPATH).
    """
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    selection = (["--quick"] if quick else []) + [argument for pattern in cases for argument in ("--case", pattern)]
    if triton_path is not None or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        rows = _run_children(["--json", "--workers", str(workers), *selection], 1, triton_path)
    elif workers <= 1:
        rows = [compile_variant(variant) for variant in launched_variants(case_selector(quick, cases))]
    elif torch.cuda.is_initialized():
        rows = _run_children(["--json", *selection, "--shard"], workers)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _VARIANTS[:] = launched_variants(case_selector(quick, cases))  # the forked workers inherit them
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            rows = list(pool.map(_compile_nth, range(len(_VARIANTS))))
    return sorted(rows, key=lambda row: (row["op"], row["part"], row["dtype"], row["variant"]))


_VARIANTS: List[dict] = []


def _compile_nth(index: int) -> dict:
    return compile_variant(_VARIANTS[index])


def check_triton_path(triton_path: str) -> str:
    """The absolute folder, or a ValueError that says how to install Triton there."""
    folder = os.path.abspath(triton_path)
    if not os.path.isfile(os.path.join(folder, "triton", "__init__.py")):
        raise ValueError(f"bench_compile: {folder} holds no Triton (no triton/__init__.py); install one there "
                         f"with `python -m pip install --no-deps --target {folder} triton==3.6.0` "
                         f"(or the version to check)")
    return folder


def _run_children(arguments: List[str], count: int, triton_path: Optional[str] = None) -> List[dict]:
    """Rows printed by `count` children running this file (the i-th gets --shard i/count), with
    triton_path, when given, first on their PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    if triton_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([check_triton_path(triton_path), *filter(None, [env.get("PYTHONPATH")])])
    shard = arguments[-1] == "--shard"
    children = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *arguments]
                                 + ([f"{index}/{count}"] if shard else []), env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for index in range(count)]
    rows = []
    for child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"bench_compile: a compile process failed:\n{err[-3000:]}")
        rows += json.loads(out)
    return rows


# ---------------------------------------------------------------- roofline of the goal shapes

def attention_pool_kernels(batch: int, channels: int, n_pos: int, hidden: int, size: int) -> List[dict]:
    """The kernels one fwd+bwd of pooled launches (channels_last h, w1 needing a gradient), each
    with its tensor FLOPs and HBM bytes, every tensor it touches counted once (kernels/
    attention_pool.py: a tile is read once, W1 and the small vectors stay in L2)."""
    h = batch * channels * n_pos * size
    vectors = batch * channels * (2 * size + 4 * 3) + batch * n_pos * 4 * 4  # pooled, gy, partials; attn
    if not hidden:
        return [dict(name="pool fwd", flops=0, reads_h=1, bytes=h + vectors // 2),
                dict(name="pool bwd", flops=0, reads_h=1, bytes=2 * h + vectors // 2)]
    z, w1 = batch * n_pos * hidden * size, hidden * channels * size
    gemm = 2 * batch * n_pos * channels * hidden
    return [dict(name="z = h W1ᵀ + b1 (cuBLAS)", flops=gemm, reads_h=1, bytes=h + w1 + z),
            dict(name="pool fwd", flops=0, reads_h=1, bytes=h + z + vectors // 2),
            dict(name="pool bwd (writes dZ)", flops=0, reads_h=1, bytes=h + 2 * z + vectors // 2),
            dict(name="dh = dZ W1 + attn ⊗ gy (Triton)", flops=gemm, reads_h=0, bytes=z + w1 + h),
            dict(name="dW1 = dZᵀ h (cuBLAS)", flops=gemm, reads_h=1, bytes=z + h + w1)]



def roofline() -> List[dict]:
    """Lower-bound times (ms) of the goal shapes on H100 and H200, beside the measured anchors
    (one row per shape; "op" is "info_nce" or "attention_pool")."""
    rows = []
    for n, backward in ((n, backward) for n in GOAL_N for backward in ("two sweeps", "one sweep")):
        one_sweep = backward == "one sweep"
        launched, floor = (8 if one_sweep else 10) * n * n * GOAL_D, 8 * n * n * GOAL_D
        qk, nd_bf16, nd_fp32 = 2 * n * GOAL_D * 2, n * GOAL_D * 2, n * GOAL_D * 4
        # prologue reads q, k (and k[labels]) and writes 4 vectors; fwd reads q, k and its vectors.
        hbm_bytes = (qk + nd_bf16 + 16 * n) + (qk + 24 * n)
        if one_sweep:  # zero dq̂; sweep reads q, k, writes dk; dq kernel reads q, dq̂, writes dq
            hbm_bytes += nd_fp32 + (qk + 24 * n + nd_bf16) + (nd_bf16 + nd_fp32 + nd_bf16)
            atomic_bytes = math.ceil(n / INFO_NCE_DK_ROWS) * nd_fp32
        else:  # gq and gk each read q, k and 6 vectors and write a bf16 gradient
            hbm_bytes += 2 * (qk + 24 * n + nd_bf16)
            atomic_bytes = 0
        tensor_ms, exp_ms = launched / TENSOR_FLOPS * 1e3, (2 if one_sweep else 3) * n * n / EXP2_PER_S * 1e3
        atomic_ms = atomic_bytes / L2_ATOMIC_BYTES_PER_S * 1e3
        roof = {chip: max(tensor_ms, exp_ms, atomic_ms, hbm_bytes / bw * 1e3) for chip, bw in HBM.items()}
        eager, compiled = INFO_NCE_EAGER_MS.get(n), INFO_NCE_COMPILE_MS.get(n)
        goals = [eager / 3 if eager else None, compiled / 1.5 if compiled else None, 22.0 if n == 65536 else None]
        rows.append(dict(
            op="info_nce", what=f"InfoNCE N=M={n // 1024}k D={GOAL_D} bf16 fwd+bwd, {backward}", backward=backward,
            flops=launched, floor_flops=floor, tensor_ms=tensor_ms, floor_ms=floor / TENSOR_FLOPS * 1e3,
            exp_ms=exp_ms, atomic_bytes=atomic_bytes, atomic_ms=atomic_ms, bytes=hbm_bytes,
            H100_ms=roof["H100"], H200_ms=roof["H200"], no_overlap_ms=tensor_ms + exp_ms + atomic_ms,
            eager_ms=eager, compile_ms=compiled, goal_ms=min((g for g in goals if g), default=None)))
    for channels, height, width in GOAL_POOL_SHAPES:
        for hidden in GOAL_HIDDEN:
            n_pos, batch = height * width, GOAL_POOL_BATCH
            hbm_bytes = compulsory_bytes("full", batch, channels, n_pos, hidden, 2)
            flops = compulsory_flops("full", batch, channels, n_pos, hidden)
            kernels = attention_pool_kernels(batch, channels, n_pos, hidden, 2)
            launched_bytes = sum(k["bytes"] for k in kernels)
            tensor_ms = flops / TENSOR_FLOPS * 1e3
            roof = {chip: max(tensor_ms, hbm_bytes / bw * 1e3) for chip, bw in HBM.items()}
            # As launched: kernel after kernel, each at the larger of its tensor and HBM times.
            launched_ms = {chip: sum(max(k["flops"] / TENSOR_FLOPS, k["bytes"] / bw) for k in kernels) * 1e3
                           for chip, bw in HBM.items()}
            rows.append(dict(
                op="attention_pool", what=f"attention pool B={batch} {channels}×{height}×{width} "
                f"hidden={hidden} bf16 fwd+bwd", flops=flops, tensor_ms=tensor_ms, bytes=hbm_bytes,
                H100_ms=roof["H100"], H200_ms=roof["H200"], h_reads=sum(k["reads_h"] for k in kernels),
                launched_bytes=launched_bytes, kernels=[k["name"] for k in kernels],
                **{f"launched_{chip}_ms": ms for chip, ms in launched_ms.items()},
                # Share of the HBM bandwidth that carries compulsory bytes while the kernels run.
                **{f"hbm_share_{chip}": hbm_bytes / (launched_ms[chip] * 1e-3) / bw for chip, bw in HBM.items()},
                # The goal: 60 % of HBM bandwidth on the compulsory traffic.
                **{f"goal_{chip}_ms": hbm_bytes / (0.6 * bw) * 1e3 for chip, bw in HBM.items()},
                eager_ms=ATTENTION_POOL_EAGER_MS.get((channels, height, width, hidden))))
    return rows


# ---------------------------------------------------------------- Markdown

def _ms(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3g}"


def _ratio(numerator: Optional[float], denominator: float) -> str:
    return "–" if numerator is None else f"{numerator / denominator:.1f}×"


def variant_table(rows: List[dict]) -> str:
    lines = ["| variant | registers | spills (B) | smem (KB) | CTAs/SM | wgmma (expected) | launched by |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        cases = sorted({case.split(" ", 1)[1] for case in row["cases"]})
        shown = ", ".join(cases[:3]) + (f" +{len(cases) - 3}" if len(cases) > 3 else "")
        wgmma = (f"{row['wgmma']} ({row['wgmma_expected']})" if row["tensor_cores"]
                 else f"FMA {row['fma']} ({row['fma_expected']})" if row["dot_volume"] else "–")
        lines.append(f"| {row['variant']} | {row['registers']} | {row['spill_bytes']} | "
                     f"{row['smem_bytes'] / 1024:.1f} | {row['ctas_per_sm']} | {wgmma} | {shown} |")
    return "\n".join(lines)


def roofline_tables(roofline_rows: List[dict]) -> str:
    lines = ["| InfoNCE goal shape, backward | tensor ms as launched (floor 8·NMD) | exp2 ms | "
             "dq̂ atomics MB / ms (L2) | HBM MB | roofline H100 / H200 ms | no overlap ms | eager ms (H200) | "
             "compile ms (H200) | goal ms | eager ÷ roofline | compile ÷ roofline |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in (r for r in roofline_rows if r["op"] == "info_nce"):
        lines.append(f"| {row['what']} | {row['tensor_ms']:.3g} ({row['floor_ms']:.3g}) | {row['exp_ms']:.3g} | "
                     f"{row['atomic_bytes'] / 1e6:.0f} / {row['atomic_ms']:.3g} | "
                     f"{row['bytes'] / 1e6:.0f} | {row['H100_ms']:.3g} / {row['H200_ms']:.3g} | "
                     f"{row['no_overlap_ms']:.3g} | {_ms(row['eager_ms'])} | {_ms(row['compile_ms'])} | "
                     f"{_ms(row['goal_ms'])} | {_ratio(row['eager_ms'], row['H200_ms'])} | "
                     f"{_ratio(row['compile_ms'], row['H200_ms'])} |")
    lines += ["", "| attention pooling goal shape | compulsory MB | tensor ms | roofline H100 / H200 ms | "
              "h reads as launched | as launched MB | as launched H100 / H200 ms | HBM share H100 / H200 | "
              "goal (60 % HBM) H100 / H200 ms | eager ms (H200) | eager ÷ roofline |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in (r for r in roofline_rows if r["op"] == "attention_pool"):
        lines.append(f"| {row['what']} | {row['bytes'] / 1e6:.0f} | {row['tensor_ms']:.3g} | "
                     f"{row['H100_ms']:.3g} / {row['H200_ms']:.3g} | {row['h_reads']} | "
                     f"{row['launched_bytes'] / 1e6:.0f} | {row['launched_H100_ms']:.3g} / "
                     f"{row['launched_H200_ms']:.3g} | {row['hbm_share_H100']:.0%} / {row['hbm_share_H200']:.0%} | "
                     f"{row['goal_H100_ms']:.3g} / {row['goal_H200_ms']:.3g} | "
                     f"{_ms(row['eager_ms'])} | {_ratio(row['eager_ms'], row['H200_ms'])} |")
    return "\n".join(lines)


def markdown(rows: List[dict], roofline_rows: Optional[List[dict]] = None) -> str:
    """The variant table, then the roofline tables (computed here when not given)."""
    return variant_table(rows) + "\n\n" + roofline_tables(roofline() if roofline_rows is None else roofline_rows)


def test_compile_report(benchmark):
    """pytest-benchmark entry (``vito-fast bench compile``): times one full report, prints it."""
    rows = benchmark.pedantic(compile_report, rounds=1, iterations=1)
    benchmark.extra_info.update(variants=len(rows), spilling=[r["variant"] for r in rows if r["spill_bytes"]],
                                triton=triton.__version__)
    print("\n" + markdown(rows))


def _arguments(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_compile.py",
        description="sm_90 compile report: compile every Triton kernel variant that vito_fast's training and "
        "benches launch for Hopper (no GPU needed; Triton's bundled ptxas) and report registers, spills, "
        "shared memory, CTAs per SM and wgmma counts against the count the tiles need, beside a roofline "
        "of the goal shapes.")
    parser.add_argument("--json", action="store_true", help="print the variant rows as JSON instead of Markdown")
    parser.add_argument("--quick", action="store_true",
                        help=f"only the {len(QUICK_CASES)} launch cases that cover every kernel part (QUICK_CASES)")
    parser.add_argument("--case", action="append", default=[], metavar="REGEX",
                        help="also (or, without --quick, only) the launch cases whose name matches, e.g. "
                        "'info_nce bf16 N=M=4100 D=256 sym'; repeatable")
    parser.add_argument("--triton-path", metavar="DIR",
                        help="compile with the Triton installed in DIR (`python -m pip install --no-deps "
                        "--target DIR triton==3.6.0`) instead of this interpreter's")
    parser.add_argument("--workers", type=int, help="compile processes (default: one per core, at most 8)")
    parser.add_argument("--shard", metavar="I/N", help=argparse.SUPPRESS)  # one compile process of compile_report()
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _arguments(argv)
    if args.shard:
        shard, shards = map(int, args.shard.split("/"))
        variants = launched_variants(case_selector(args.quick, args.case))[shard::shards]
        print(json.dumps([compile_variant(variant) for variant in variants]))
        return
    if args.triton_path is not None:
        try:
            check_triton_path(args.triton_path)
        except ValueError as error:
            sys.exit(str(error))
    start = time.perf_counter()
    report = compile_report(args.workers, quick=args.quick, cases=args.case, triton_path=args.triton_path)
    if args.json:
        print(json.dumps(report))
        return
    versions = sorted({row["triton"] for row in report}) or [triton.__version__ if args.triton_path is None else "?"]
    selection = (" (--quick and --case)" if args.quick and args.case else " (--quick)" if args.quick
                 else " (--case)" if args.case else "")
    print(f"sm_90 compile report, Triton {', '.join(versions)}"
          f"{f' from {os.path.abspath(args.triton_path)}' if args.triton_path else ''}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, {len(report)} variants{selection}, "
          f"{sum(bool(row['spill_bytes'] or row['spill_load_bytes']) for row in report)} spilling, "
          f"{time.perf_counter() - start:.0f} s\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
