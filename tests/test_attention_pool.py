"""attention_pool: the Triton kernels (GPU or TRITON_INTERPRET) against the float64 reference.

The full grid of odd shapes runs on the reference path (cheap); the interpreter runs a subset
that still covers every value of every axis, both memory formats and both launch paths (one
tile vs several position tiles / channel blocks / hidden blocks, forced by small block sizes).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

import vito_fast
import vito_fast.kernels.attention_pool as kernel_module
from vito_fast.nn.attention_pool import AttentionPool2d
from vito_fast.ops.attention_pool import attention_pool
from vito_fast.ops.tolerance import ATTENTION_POOL_ATOL as ATOL
from vito_fast.reference.attention_pool import attention_pool_reference

BATCHES, CHANNELS, SIZES, HIDDENS = (1, 3), (3, 65, 256), ((1, 1), (7, 7), (14, 14), (5, 9)), (0, 7, 64)


def make_inputs(batch, channels, size, hidden, channels_last=False, with_b1=True):
    """Float64 master inputs: h (B, C, H, W) and weights scaled so logits are O(1)."""
    h = torch.randn(batch, channels, *size, dtype=torch.float64)
    if channels_last:
        h = h.to(memory_format=torch.channels_last)
    w1 = torch.randn(hidden, channels, dtype=torch.float64) / channels**0.5 if hidden else None
    b1 = 0.5 * torch.randn(hidden, dtype=torch.float64) if hidden and with_b1 else None
    w2 = torch.randn(hidden or channels, dtype=torch.float64) / (hidden or channels) ** 0.5 * 2
    b2 = torch.randn((), dtype=torch.float64)
    return h, w1, b1, w2, b2


def run(inputs, dtype, grad_pooled, grad_attn, **kwargs):
    """Outputs and gradients (h, w1, b1, w2, b2) of one call, inputs cast to dtype, in float64."""
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_(True) for t in inputs]
    if leaves[0].dim() == 4 and inputs[0].is_contiguous(memory_format=torch.channels_last):
        assert leaves[0].is_contiguous(memory_format=torch.channels_last)
    pooled, attn = attention_pool(*leaves, **kwargs)
    loss = 0.0
    if grad_pooled is not None:
        loss = loss + (pooled.double() * grad_pooled).sum()
    if grad_attn is not None:
        loss = loss + (attn.double() * grad_attn).sum()
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(loss, present))
    grads = [None if t is None else next(grads).double() for t in leaves]
    return pooled.detach().double(), attn.detach().double(), grads


def max_errors(ours, ref):
    """Max absolute error of each compared tensor (outputs then gradients)."""
    (p, a, g), (rp, ra, rg) = ours, ref
    errors = [(p - rp).abs().max().item(), (a - ra).abs().max().item()]
    errors += [(x - y).abs().max().item() for x, y in zip(g, rg) if x is not None]
    return errors


# ---------------------------------------------------------------- reference: the full grid

@pytest.mark.parametrize("batch,channels,size,hidden", list(itertools.product(BATCHES, CHANNELS, SIZES, HIDDENS)))
def test_reference_grid_properties(batch, channels, size, hidden):
    inputs = make_inputs(batch, channels, size, hidden)
    pooled, attn = attention_pool(*inputs, backend="torch")
    assert pooled.shape == (batch, channels) and attn.shape == (batch, *size)
    assert attn.dtype == torch.float64 and (attn >= 0).all()
    torch.testing.assert_close(attn.sum((1, 2)), torch.ones(batch, dtype=torch.float64))
    # pooled is the attention-weighted mean, so it lies inside each channel's range.
    flat = inputs[0].flatten(2)
    assert (pooled <= flat.amax(2) + 1e-12).all() and (pooled >= flat.amin(2) - 1e-12).all()
    # channels_last gives the same numbers; b2 cancels in the softmax.
    h_cl = inputs[0].to(memory_format=torch.channels_last)
    pooled_cl, attn_cl = attention_pool(h_cl, *inputs[1:4], inputs[4] + 3.0, backend="torch")
    torch.testing.assert_close(pooled_cl, pooled)
    torch.testing.assert_close(attn_cl, attn)
    if size == (1, 1):
        assert (attn == 1).all()
        torch.testing.assert_close(pooled, inputs[0][:, :, 0, 0])
    # The CPU path in float32, forward and backward, against the float64 one.
    grad_pooled, grad_attn = torch.randn_like(pooled), torch.randn_like(attn)
    ref = run(inputs, torch.float64, grad_pooled, grad_attn, backend="torch")
    ours = run(inputs, torch.float32, grad_pooled, grad_attn, backend="torch")
    assert max(max_errors(ours, ref)) < 1e-4


def test_auto_on_cpu_is_the_reference():
    inputs = make_inputs(3, 65, (5, 9), 7)
    ours = vito_fast.attention_pool(*inputs)
    ref = attention_pool_reference(*inputs)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


@pytest.mark.parametrize("hidden,with_b1", [(0, False), (5, True), (5, False)])
def test_reference_gradcheck_float64(hidden, with_b1):
    h, w1, b1, w2, b2 = make_inputs(2, 4, (3, 2), hidden, with_b1=with_b1)
    leaves = [t.requires_grad_(True) for t in (h, w1, b1, w2, b2) if t is not None]

    def both(*args):
        it = iter(args)
        full = [next(it) if t is not None else None for t in (h, w1, b1, w2, b2)]
        return attention_pool(*full, backend="torch")

    assert torch.autograd.gradcheck(both, leaves)


# ---------------------------------------------------------------- Triton (interpreter on CPU)

# (B, C, (H, W), hidden, channels_last, block sizes or None for the defaults): every axis value,
# both formats, one position tile per row and several (the online softmax rescales), the dh GEMM in
# one block and in several row / channel / hidden blocks, all forced through small block sizes
# (positions, channels, hidden).
TRITON_CASES = [
    (1, 3, (1, 1), 0, False, None),
    (3, 65, (5, 9), 0, True, None),
    (3, 65, (5, 9), 0, False, (16, 16, 16)),
    (1, 256, (14, 14), 0, True, None),
    (3, 256, (7, 7), 0, False, (4, 32, 16)),
    (1, 3, (7, 7), 7, True, None),
    (3, 65, (5, 9), 7, False, (16, 16, 16)),
    (3, 65, (1, 1), 64, True, None),
    (1, 256, (14, 14), 64, False, (64, 64, 16)),
    (3, 256, (7, 7), 64, True, None),
    (3, 65, (14, 14), 7, True, (32, 16, 16)),
    # The real default tiles of a goal shape's channel count: 4 positions × 2048 channels, 13
    # position tiles per row at 7×7 (the last one holds a single position).
    (2, 2048, (7, 7), 0, True, None),
    # NCHW, linear, default tiles: 2K-element tiles (8 × 256 at C = 256, 32 × 64 at C = 45).
    (2, 256, (7, 7), 0, False, None),
    (1, 45, (14, 14), 0, False, None),
]


@pytest.mark.parametrize("batch,channels,size,hidden,channels_last,blocks", TRITON_CASES)
def test_triton_fp32_matches_float64_reference(batch, channels, size, hidden, channels_last, blocks, kernel_device):
    inputs = [None if t is None else t.to(kernel_device) for t in make_inputs(batch, channels, size, hidden, channels_last)]
    grad_pooled = torch.randn(batch, channels, dtype=torch.float64, device=kernel_device)
    grad_attn = torch.randn(batch, *size, dtype=torch.float64, device=kernel_device)
    ref = run(inputs, torch.float64, grad_pooled, grad_attn, backend="torch")
    ours = run(inputs, torch.float32, grad_pooled, grad_attn, backend="triton", block_sizes=blocks)
    torch.testing.assert_close(ours[1].sum((1, 2)), torch.ones(batch, dtype=torch.float64, device=kernel_device),
                               atol=1e-6, rtol=0)
    names = ["pooled", "attn", "dh", "dw1", "db1", "dw2", "db2"]
    for name, x, y in zip(names, [ours[0], ours[1], *ours[2]], [ref[0], ref[1], *ref[2]]):
        if name == "db2":
            assert (x == 0).all(), "b2 cancels in the softmax: its gradient is zero"
        elif y is not None:
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")
    if channels_last:  # dh comes back in h's memory format
        dh = run(inputs, torch.float32, grad_pooled, None, backend="triton", block_sizes=blocks)[2][0]
        assert dh.is_contiguous(memory_format=torch.channels_last) or size == (1, 1)


@pytest.mark.parametrize("uses", ["pooled", "attn"])
@pytest.mark.parametrize("hidden", [0, 7])
def test_triton_gradient_through_one_output(uses, hidden, kernel_device):
    inputs = [None if t is None else t.to(kernel_device) for t in make_inputs(3, 65, (5, 9), hidden)]
    grad_pooled = torch.randn(3, 65, dtype=torch.float64, device=kernel_device) if uses == "pooled" else None
    grad_attn = torch.randn(3, 5, 9, dtype=torch.float64, device=kernel_device) if uses == "attn" else None
    ref = run(inputs, torch.float64, grad_pooled, grad_attn, backend="torch")
    ours = run(inputs, torch.float32, grad_pooled, grad_attn, backend="triton", block_sizes=(16, 16, 16))
    assert max(max_errors(ours, ref)) < 1e-4


def test_triton_odd_strides_and_no_b1(kernel_device):
    """h that no view can flatten (a W slice) and w1 without b1."""
    h, w1, _, w2, b2 = make_inputs(3, 65, (5, 18), 7, channels_last=True)
    inputs = [h[..., ::2].to(kernel_device), w1.to(kernel_device), None, w2.to(kernel_device), b2.to(kernel_device)]
    grad_pooled = torch.randn(3, 65, dtype=torch.float64, device=kernel_device)
    ref = run(inputs, torch.float64, grad_pooled, None, backend="torch")
    ours = run(inputs, torch.float32, grad_pooled, None, backend="triton")
    assert ours[2][2] is None
    assert max(max_errors(ours, ref)) < 1e-4


@pytest.mark.parametrize("w1_trainable", [False, True])
def test_triton_frozen_w1_skips_its_gemm(w1_trainable, monkeypatch, kernel_device):
    calls = []
    grad_w1 = kernel_module.grad_w1

    def counting_grad_w1(*args):
        calls.append(args)
        return grad_w1(*args)

    monkeypatch.setattr(kernel_module, "grad_w1", counting_grad_w1)
    h, w1, b1, w2, b2 = [t.float().to(kernel_device) for t in make_inputs(3, 65, (5, 9), 7)]
    for tensor in (h, w2) + ((w1,) if w1_trainable else ()):
        tensor.requires_grad_(True)
    pooled, _ = attention_pool(h, w1, b1, w2, b2, backend="triton")
    pooled.sum().backward()
    assert len(calls) == int(w1_trainable), "the dW1 GEMM runs only when w1 needs a gradient"
    assert (w1.grad is not None) == w1_trainable and h.grad.abs().sum() > 0 and w2.grad.abs().sum() > 0


@pytest.mark.parametrize("hidden", [0, 7])
@pytest.mark.parametrize("order", ["rising", "falling"])
def test_triton_online_softmax_rescales_across_tiles(hidden, order, kernel_device):
    """Logits spread over ~60 and rising (or falling) along the positions: with 4-position tiles
    the running max changes at nearly every tile (rising) or never after the first (falling), and
    a pooled accumulator that were not rescaled by exp(m_old − m_new) would be off by e^±60."""
    h, w1, b1, w2, b2 = make_inputs(2, 33, (5, 7), hidden, channels_last=True)
    ramp = torch.linspace(-1.0, 1.0, 35, dtype=torch.float64).view(1, 1, 5, 7)
    direction = (w2 if w1 is None else w1.t() @ w2).sign().view(1, -1, 1, 1)  # raises the logits
    h = h + (ramp if order == "rising" else -ramp) * 30.0 * direction / 33**0.5
    w2 = w2 * 3.0
    inputs = [None if t is None else t.to(kernel_device) for t in (h, w1, b1, w2, b2)]
    grad_pooled = torch.randn(2, 33, dtype=torch.float64, device=kernel_device)
    ref = run(inputs, torch.float64, grad_pooled, None, backend="torch")
    ours = run(inputs, torch.float32, grad_pooled, None, backend="triton", block_sizes=(4, 16, 16))
    assert ref[1].amax().item() > 0.3, "the reference attention should be peaked for this test to bite"
    for x, y in zip([ours[0], ours[1], *ours[2]], [ref[0], ref[1], *ref[2]]):
        if y is not None and x is not None:
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3)


def test_triton_refuses_too_many_channels_and_names_the_limit(kernel_device):
    h = torch.zeros(1, 16385, 1, 1, device=kernel_device)
    with pytest.raises(ValueError, match="at most 16384 channels and hidden units, got C = 16385"):
        attention_pool(h, None, None, torch.zeros(16385, device=kernel_device), backend="triton")


class _PoisonedTorch:
    """Stands in for `torch` inside the launchers: every fresh buffer starts as NaN."""

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *args, **kwargs):
        return torch.empty(*args, **kwargs).fill_(float("nan"))

    def empty_like(self, *args, **kwargs):
        return torch.empty_like(*args, **kwargs).fill_(float("nan"))


@pytest.mark.parametrize("hidden,blocks", [(0, None), (0, (16, 16, 16)), (7, None), (64, (32, 32, 32))])
def test_triton_writes_every_output_element(hidden, blocks, monkeypatch, kernel_device):
    monkeypatch.setattr(kernel_module, "torch", _PoisonedTorch())
    inputs = [None if t is None else t.to(kernel_device) for t in make_inputs(3, 65, (5, 9), hidden, channels_last=True)]
    grad_pooled = torch.randn(3, 65, dtype=torch.float64, device=kernel_device)
    grad_attn = torch.randn(3, 5, 9, dtype=torch.float64, device=kernel_device)
    ours = run(inputs, torch.float32, grad_pooled, grad_attn, backend="triton", block_sizes=blocks)
    ref = run(inputs, torch.float64, grad_pooled, grad_attn, backend="torch")
    errors = max_errors(ours, ref)
    assert all(e == e for e in errors), "a NaN shows an output or scratch element never written"
    assert max(errors) < 1e-4


# (dtype, hidden, atol): err(ours, ref64) <= 2 * err(torch same dtype, ref64) + atol.
# Under the interpreter bf16 only runs the linear variant: its kernels use no bf16 tl.dot.
LOW_PRECISION = [(torch.float16, 0, ATOL[torch.float16]), (torch.float16, 64, ATOL[torch.float16]),
                 (torch.bfloat16, 0, ATOL[torch.bfloat16])]


@pytest.mark.parametrize("dtype,hidden,atol", LOW_PRECISION)
def test_triton_low_precision_rule(dtype, hidden, atol, kernel_device):
    inputs = [None if t is None else t.to(kernel_device) for t in make_inputs(3, 65, (7, 7), hidden, channels_last=True)]
    grad_pooled = torch.randn(3, 65, dtype=torch.float64, device=kernel_device)
    grad_attn = torch.randn(3, 7, 7, dtype=torch.float64, device=kernel_device)
    ref = run(inputs, torch.float64, grad_pooled, grad_attn, backend="torch")
    torch_low = run(inputs, dtype, grad_pooled, grad_attn, backend="torch")
    ours = run(inputs, dtype, grad_pooled, grad_attn, backend="triton")
    assert ours[0].isfinite().all()
    for name, ours_err, torch_err in zip(["pooled", "attn", "dh", "dw1", "db1", "dw2"],
                                         max_errors(ours, ref), max_errors(torch_low, ref)):
        assert ours_err <= 2 * torch_err + atol, f"{name}: ours {ours_err:.2e} vs torch {torch_err:.2e}"


# Compiles every attention-pool variant the launchers would launch at the goal shapes for sm_90
# (benches/bench_compile.py, Triton's bundled ptxas, no GPU): catches what the interpreter cannot
# (layouts, tl.dot shape rules, loop-carried types). TRITON_INTERPRET must be off in that process.
_COMPILE_FOR_SM90 = r"""
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
sys.path.insert(0, sys.argv[1])
import bench_compile
bench_compile._info_nce_launches = lambda calls: None
cases = bench_compile.ATTENTION_POOL_CASES
bench_compile.ATTENTION_POOL_CASES = [case for case in cases if case[0] == "bf16"]
rows = []
for variant in bench_compile.launched_variants():
    row = bench_compile.compile_variant(variant)
    source = ASTSource(variant["fn"], variant["signature"], variant["constexprs"], variant["attrs"])
    options = variant["options"].__dict__
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
    rows.append(dict(variant=row["variant"], spills=row["spill_bytes"], wgmma=row["wgmma"],
                     expected=row["wgmma_expected"],
                     vector=len(re.findall(r"ld\.global[.\w]*\.v4\.b32", ptx))))
print(json.dumps(rows))
"""


def test_kernels_compile_for_sm90():
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90, bench], env=env, capture_output=True,
                            text=True, timeout=300)
    if "ptxas" in result.stderr and "not found" in result.stderr.lower():
        pytest.skip("Triton's ptxas is not installed")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["variant"]: row for row in json.loads(result.stdout.strip().splitlines()[-1])}
    # fwd and bwd, linear and MLP, NHWC and NCHW, at two channel counts; the dh GEMM per layout.
    assert len(rows) == 18, sorted(rows)
    for name, row in rows.items():
        assert row["spills"] == 0, name
        if "dh-gemm" in name:
            assert row["wgmma"] == row["expected"] > 0, name
        elif "NHWC" in name:  # channels contiguous: h is read with 16-byte vector loads
            assert row["vector"] > 0, name


# ---------------------------------------------------------------- GPU only: benchmark-like shapes

@pytest.mark.cuda
@pytest.mark.parametrize("dtype,atol", list(ATOL.items()))
@pytest.mark.parametrize("channels,size,hidden", [(2048, (7, 7), 0), (2048, (7, 7), 512), (1024, (14, 14), 512), (1024, (14, 14), 0)])
def test_cuda_benchmark_shapes_low_precision_rule(dtype, atol, channels, size, hidden):
    inputs = [None if t is None else t.cuda() for t in make_inputs(64, channels, size, hidden, channels_last=True)]
    grad_pooled = torch.randn(64, channels, dtype=torch.float64, device="cuda")
    grad_attn = torch.randn(64, *size, dtype=torch.float64, device="cuda")
    ref = run(inputs, torch.float64, grad_pooled, grad_attn, backend="torch")
    torch_low = run(inputs, dtype, grad_pooled, grad_attn, backend="torch")
    ours = run(inputs, dtype, grad_pooled, grad_attn, backend="triton")
    for name, ours_err, torch_err in zip(["pooled", "attn", "dh", "dw1", "db1", "dw2"],
                                         max_errors(ours, ref), max_errors(torch_low, ref)):
        assert ours_err <= 2 * torch_err + atol, f"{name}: ours {ours_err:.2e} vs torch {torch_err:.2e}"


@pytest.mark.cuda
def test_cuda_auto_dispatches_to_triton():
    inputs = [None if t is None else t.cuda().float() for t in make_inputs(3, 65, (5, 9), 7)]
    auto = attention_pool(*inputs)
    triton = attention_pool(*inputs, backend="triton")
    assert torch.equal(auto[0], triton[0]) and torch.equal(auto[1], triton[1])


@pytest.mark.cuda
def test_cuda_auto_uses_the_reference_beyond_the_widest_tile():
    h = torch.randn(2, 16385, 1, 2, device="cuda")
    w2 = torch.randn(16385, device="cuda") / 128
    auto = attention_pool(h, None, None, w2)
    reference = attention_pool_reference(h, None, None, w2, None)
    assert torch.equal(auto[0], reference[0]) and torch.equal(auto[1], reference[1])


@pytest.mark.cuda
def test_cuda_module_under_bf16_autocast():
    pool = AttentionPool2d(256, hidden_channels=64).cuda()
    h = torch.randn(8, 256, 7, 7, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        pooled, attn = pool(h.bfloat16())
    assert pooled.dtype == torch.bfloat16 and attn.dtype == torch.float32
    pooled.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in pool.parameters())


# ---------------------------------------------------------------- module and input checks

@pytest.mark.parametrize("hidden,backend", [(0, "torch"), (16, "torch"), (16, "triton")])
def test_module_returns_the_attention_and_gradients_flow(hidden, backend, kernel_device):
    device = kernel_device if backend == "triton" else "cpu"
    pool = AttentionPool2d(65, hidden_channels=hidden, backend=backend).to(device)
    h = torch.randn(3, 65, 5, 9, device=device).to(memory_format=torch.channels_last).requires_grad_(True)
    pooled, attn = pool(h)
    assert pooled.shape == (3, 65) and attn.shape == (3, 5, 9) and attn.dtype == torch.float32
    assert attn.requires_grad and not any(isinstance(value, torch.Tensor) for value in vars(pool).values())
    torch.testing.assert_close(attn.sum((1, 2)), torch.ones(3, device=device))
    pooled.square().sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    for name, param in pool.named_parameters():
        assert param.grad is not None, name
        if name == "b2":  # zero up to rounding: b2 cancels in the softmax
            assert param.grad.abs().item() < 1e-5
        else:
            assert param.grad.abs().sum() > 0, name


def _bad_calls():
    h, w1, b1, w2, b2 = make_inputs(2, 8, (3, 3), 4)
    f32 = [None if t is None else t.float() for t in (h, w1, b1, w2, b2)]
    h, w1, b1, w2, b2 = f32
    return [
        ("h 3-D", (h[0], w1, b1, w2, b2), {}, ValueError, "h must be 4-D"),
        ("h int", (h.long(), w1, b1, w2, b2), {}, TypeError, "floating point"),
        ("w1 channels", (h, w1[:, :5], b1, w2, b2), {}, ValueError, "w1 has 5 input channels but h has 8"),
        ("w1 rank", (h, w1[None], b1, w2, b2), {}, ValueError, "w1 must be 2-D"),
        ("b1 hidden", (h, w1, b1[:3], w2, b2), {}, ValueError, "b1 must have shape"),
        ("w2 hidden", (h, w1, b1, w2[:3], b2), {}, ValueError, "w2 must have shape"),
        ("w2 linear", (h, None, None, w2, b2), {}, ValueError, r"w2 must have shape \(8,\)"),
        ("b1 without w1", (h, None, b1, torch.randn(8), b2), {}, ValueError, "b1 is given but w1 is None"),
        ("w2 missing", (h, w1, b1, None, b2), {}, ValueError, "w2 is required"),
        ("b2 vector", (h, w1, b1, w2, torch.zeros(2)), {}, ValueError, "b2 must be a scalar"),
        ("w1 dtype", (h, w1.double(), b1, w2, b2), {}, TypeError, "w1 is torch.float64 but h is torch.float32"),
        ("w2 dtype", (h, w1, b1, w2.half(), b2), {}, TypeError, "w2 is torch.float16"),
        ("w1 device", (h, w1.to("meta"), b1, w2, b2), {}, ValueError, "w1 is on meta"),
        ("backend", (h, w1, b1, w2, b2), {"backend": "cuda"}, ValueError, "backend must be one of"),
        ("float64 triton", (h.double(), None, None, w2.double()[:4].repeat(2), b2.double()),
         {"backend": "triton"}, TypeError, "Triton backend takes"),
        ("empty", (h[:, :, :0], w1, b1, w2, b2), {}, ValueError, "no positions"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda case: case[0])
def test_input_checks_name_the_argument(case):
    _, args, kwargs, error, match = case
    with pytest.raises(error, match=match):
        attention_pool(*args, **kwargs)
