"""InfoNCE: Triton kernels (interpreter on CPU) and the dispatch against the float64 reference."""
from __future__ import annotations

import math
import os

import pytest
import torch

from vito_fast.ops.info_nce import info_nce
from vito_fast.ops.tolerance import INFO_NCE_ATOL
from vito_fast.reference.info_nce import info_nce_reference

# (dtype, relative atol) side by side: the error allowed on top of 2·err(torch same dtype).
TOLERANCES = INFO_NCE_ATOL  # shared with the first-use self-check (vito_fast/ops/self_check.py)


def _inputs(n, m, d, *, scale=1.0, dtype=torch.float64):
    return torch.randn(n, d, dtype=dtype) * scale, torch.randn(m, d, dtype=dtype) * scale


def _loss_and_grads(fn, q, k, temperature, upstream, **options):
    """Loss of fn and the gradients of q, k, τ under the same upstream gradient."""
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    tau = torch.tensor(temperature, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
                       device=q.device, requires_grad=True)
    loss = fn(q, k, tau, **options)
    grads = torch.autograd.grad(loss, (q, k, tau), upstream.to(loss.device, loss.dtype))
    return [loss.detach()] + [g.detach() for g in grads]


def _assert_close_to_ref64(ours, torch_same_dtype, ref64, dtype, what, floors):
    """err(ours, ref64) ≤ 2·err(torch same dtype, ref64) + atol.

    atol is relative to max(|ref64|, floor): a result that cancels to ~0 (dτ when N = M = 1) is
    judged against the size of the terms that cancelled, given in floors.
    """
    names = ("loss", "dq", "dk", "dtemperature")
    for name, mine, theirs, truth, floor in zip(names, ours, torch_same_dtype, ref64, floors):
        truth = truth.double()
        our_err = (mine.double().cpu() - truth).abs().max().item()
        torch_err = (theirs.double().cpu() - truth).abs().max().item()
        atol = TOLERANCES[dtype] * max(truth.abs().max().item(), floor, 1e-3)
        assert math.isfinite(our_err), f"{what}: {name} is not finite"
        assert our_err <= 2 * torch_err + atol, (
            f"{what}: {name} error {our_err:.3g} > 2·{torch_err:.3g} (torch {dtype}) + {atol:.3g}")


def _compare(kernel_device, n, m, d, *, dtype=torch.float32, temperature=0.1, symmetric=False,
             normalize=True, reduction="mean", random_labels=False, scale=1.0, block_sizes=None,
             upstream_scale=1.0, deterministic=False):
    q, k = _inputs(n, m, d, scale=scale)
    labels = torch.randint(0, m, (n,)) if random_labels else None
    upstream = torch.randn(n if reduction == "none" else (), dtype=torch.float64) * upstream_scale
    options = dict(labels=labels, symmetric=symmetric, normalize=normalize, reduction=reduction)
    ref64 = _loss_and_grads(info_nce_reference, q, k, temperature, upstream, **options)
    dev_options = dict(options, labels=None if labels is None else labels.to(kernel_device))
    # PyTorch's own error in this dtype, on the same device as ours (cuBLAS rounds like a GPU).
    same_dtype = _loss_and_grads(info_nce_reference, q.to(kernel_device, dtype), k.to(kernel_device, dtype),
                                 temperature, upstream, **dev_options)
    ours = _loss_and_grads(info_nce, q.to(kernel_device, dtype), k.to(kernel_device, dtype),
                           temperature, upstream, backend="triton", block_sizes=block_sizes,
                           deterministic=deterministic, **dev_options)
    assert ours[0].shape == ref64[0].shape and ours[0].dtype == torch.float32
    # Scale of the terms each result sums: the largest logit, times the upstream mass for dτ.
    q_hat, k_hat = (q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)) if normalize else (q, k)
    max_logit = (q_hat @ k_hat.T).abs().max().item() / temperature
    mass = upstream.abs().sum().item() * (1.0 if reduction == "mean" else 1.0 / n)
    floors = (max_logit * (n if reduction == "sum" else 1.0), 0.0, 0.0, max_logit / temperature * mass * n)
    _assert_close_to_ref64(ours, same_dtype, ref64, dtype, f"N={n} M={m} D={d} {options}", floors)


# Odd sizes; block_sizes (16, 16, 16) forces several row, column and D tiles at these shapes.
TRITON_CASES = [
    # n, m, d, symmetric, normalize, reduction, random_labels, temperature, block_sizes
    (1, 1, 1, False, True, "mean", False, 0.1, None),
    (3, 17, 3, False, True, "none", True, 0.01, None),
    (17, 67, 67, False, True, "sum", True, 0.5, None),
    (17, 67, 67, False, True, "mean", True, 0.07, (16, 16, 16)),
    (67, 67, 17, True, True, "none", False, 0.2, (16, 32, 16)),
    (67, 67, 17, True, True, "mean", False, 1.0, None),
    (3, 129, 17, False, False, "mean", True, 0.3, (16, 16, 16)),
    (67, 129, 3, False, True, "none", False, 0.05, (16, 64, 16)),
    (129, 129, 33, True, False, "sum", False, 0.1, (32, 32, 16)),
    (257, 257, 67, False, True, "mean", False, 0.1, None),
    # N a multiple of 16: where deterministic=False takes the one-sweep backward (atomic dq).
    (48, 67, 33, False, True, "mean", True, 0.1, None),
    (64, 129, 40, False, True, "none", False, 0.07, (16, 32, 16)),
    (80, 80, 67, False, False, "sum", True, 0.2, (32, 16, 16)),
    # The GPU's backward shape: 128 q rows × 64 k rows in both sweeps (gk: 64 own, 128 streamed).
    (133, 131, 40, False, True, "mean", True, 0.1, (128, 64, None)),
    (131, 131, 40, True, True, "none", False, 0.2, (128, 64, None)),
]


@pytest.mark.parametrize("deterministic", [False, True], ids=["one_sweep", "deterministic"])
@pytest.mark.parametrize("n,m,d,symmetric,normalize,reduction,random_labels,temperature,block_sizes",
                         TRITON_CASES)
def test_triton_matches_float64_reference(kernel_device, n, m, d, symmetric, normalize, reduction,
                                          random_labels, temperature, block_sizes, deterministic):
    _compare(kernel_device, n, m, d, temperature=temperature, symmetric=symmetric,
             normalize=normalize, reduction=reduction, random_labels=random_labels,
             block_sizes=block_sizes, deterministic=deterministic)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("block_sizes", [None, (16, 16, 16)])
def test_triton_large_norm_without_normalization(kernel_device, symmetric, block_sizes):
    # Logits reach ~1e4: the online max must keep exp from overflowing.
    _compare(kernel_device, 33, 33, 17, scale=30.0, temperature=0.01, normalize=False,
             symmetric=symmetric, reduction="none", block_sizes=block_sizes)


@pytest.mark.parametrize("symmetric,block_sizes,deterministic",
                         [(False, (16, 16, 16), False), (True, None, True), (True, (16, 32, 16), False)])
def test_triton_float16_low_precision_rule(kernel_device, symmetric, block_sizes, deterministic):
    _compare(kernel_device, 67, 67, 33, dtype=torch.float16, temperature=0.1, symmetric=symmetric,
             block_sizes=block_sizes, deterministic=deterministic)


def test_triton_bfloat16_on_the_interpreter(kernel_device):
    """bf16 through backend="triton": on a GPU the tensor-core path, on the interpreter (whose bf16
    tl.dot is broken) the fp32 fallback; either way within the low-precision rule."""
    _compare(kernel_device, 33, 67, 17, dtype=torch.bfloat16, temperature=0.1, random_labels=True)


@pytest.mark.parametrize("symmetric,reduction,deterministic",
                         [(False, "sum", False), (True, "none", True), (False, "none", False)])
def test_triton_float16_tiny_upstream_weights(kernel_device, symmetric, reduction, deterministic):
    """Upstream gradients ~1e-6 (a mean over 64k rows times a small loss weight): dS (~1e-6) would
    sink into fp16's subnormals inside the dot unless the kernels rescale it, while the fp16
    gradients themselves (×1/τ = 1000) are normal. They must scale linearly with the upstream gradient
    (per-row weights: the kernels find their max on the device)."""
    q, k = _inputs(67, 67, 17, dtype=torch.float16)
    q, k = q.to(kernel_device).requires_grad_(), k.to(kernel_device).requires_grad_()
    loss = info_nce(q, k, 0.001, symmetric=symmetric, normalize=False, reduction=reduction,
                    backend="triton", deterministic=deterministic)
    upstream = torch.rand(loss.shape, device=kernel_device) + 0.5
    unit = torch.autograd.grad(loss, (q, k), upstream, retain_graph=True)
    tiny = torch.autograd.grad(loss, (q, k), upstream * 1e-6)
    for name, one, small in zip(("dq", "dk"), unit, tiny):
        assert one.abs().max() > 0
        torch.testing.assert_close(small.float() / 1e-6, one.float(), rtol=2e-3, atol=2e-3 * one.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


def test_triton_gradients_only_where_asked(kernel_device):
    q, k = _inputs(17, 33, 17, dtype=torch.float32)
    q, k = q.to(kernel_device).requires_grad_(), k.to(kernel_device)  # keys without grad (VITO)
    loss = info_nce(q, k, 0.1, backend="triton")
    loss.backward()
    assert k.grad is None and q.grad is not None
    q_ref = q.detach().clone().requires_grad_()
    info_nce_reference(q_ref, k, 0.1).backward()
    torch.testing.assert_close(q.grad, q_ref.grad, atol=1e-5, rtol=1e-4)
    # Only the temperature: dτ is read off gq even though q needs no gradient.
    tau = torch.tensor(0.2, device=kernel_device, requires_grad=True)
    (dtau,) = torch.autograd.grad(info_nce(q.detach(), k, tau, backend="triton"), (tau,))
    tau_ref = torch.tensor(0.2, requires_grad=True)
    (dtau_ref,) = torch.autograd.grad(info_nce_reference(q.detach().cpu(), k.cpu(), tau_ref), (tau_ref,))
    torch.testing.assert_close(dtau.cpu(), dtau_ref, atol=1e-5, rtol=1e-4)


def test_triton_noncontiguous_inputs(kernel_device):
    base_q, base_k = _inputs(40, 24, 34, dtype=torch.float32)
    q = base_q.to(kernel_device)[::2, ::2].requires_grad_()  # row and column strides ≠ (D, 1)
    k = base_k.to(kernel_device).T.contiguous().T[:, 1::2].requires_grad_()  # column-major
    assert not q.is_contiguous() and not k.is_contiguous()
    labels = torch.randint(0, 24, (20,), device=kernel_device)
    upstream = torch.randn(20, device=kernel_device)
    ours = info_nce(q, k, 0.1, labels=labels, backend="triton", reduction="none")
    ours_grads = torch.autograd.grad(ours, (q, k), upstream)
    ref = info_nce_reference(q, k, 0.1, labels=labels, reduction="none")
    ref_grads = torch.autograd.grad(ref, (q, k), upstream)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(ours_grads, ref_grads):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_triton_path_never_allocates_n_by_m(kernel_device):
    """Every tensor PyTorch creates during forward and backward stays far below N×M floats (the
    reference's largest is exactly N×M); the symmetric column partials are 2·N·M/BLOCK_M."""
    from torch.utils._python_dispatch import TorchDispatchMode

    n = m = 257
    largest = []

    class WatchSizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    largest.append((t.numel() * t.element_size(), str(func)))
            return out

    q, k = _inputs(n, m, 5, dtype=torch.float32)
    q, k = q.to(kernel_device).requires_grad_(), k.to(kernel_device).requires_grad_()
    with WatchSizes():
        info_nce(q, k, 0.1, symmetric=True, backend="triton").backward()  # row and column paths
    biggest = max(largest)
    assert biggest[0] <= 4 * n * m // 8, f"{biggest[1]} made {biggest[0]} bytes (N×M floats: {4 * n * m})"
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


@pytest.mark.parametrize("deterministic", [False, True])
def test_triton_outputs_fully_written(kernel_device, monkeypatch, deterministic):
    """Poison every buffer the launchers allocate: an unwritten element would surface as NaN."""
    import vito_fast.kernels.info_nce as kernels

    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        return real_empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(kernels.torch, "empty", poisoned_empty)
    q, k = _inputs(40, 40, 33, dtype=torch.float32)
    q, k = q.to(kernel_device), k.to(kernel_device)
    blocks = dict(block_m=16, block_n=32, block_d=16)
    per_row, state = kernels.info_nce_fwd(q, k, 0.1, symmetric=True, reduction="none",
                                          deterministic=deterministic, **blocks)
    logits = 10.0 * (q / q.norm(dim=1, keepdim=True)) @ (k / k.norm(dim=1, keepdim=True)).T
    for stats in state:
        assert torch.isfinite(stats).all()
    lse2 = lambda m, s: (m.double() + s.double()) * math.log(2)  # noqa: E731
    torch.testing.assert_close(lse2(state.row_max, state.row_log_sum), torch.logsumexp(logits, 1).double(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(lse2(state.col_max, state.col_log_sum), torch.logsumexp(logits, 0).double(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(per_row, info_nce_reference(q, k, 0.1, symmetric=True, reduction="none"))
    upstream = torch.randn(40, device=kernel_device)
    gq, gk, tau_partial = kernels.info_nce_bwd(q, k, state, upstream, reduction="none", deterministic=deterministic,
                                               block_dout=32, **blocks)
    assert torch.isfinite(gq).all() and torch.isfinite(gk).all() and torch.isfinite(tau_partial).all()


# ---- launches and host synchronisation of a training step ----------------------------------

# aten ops that launch no kernel on a GPU: allocations without a fill, views, metadata.
_NO_KERNEL = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "view", "_unsafe_view",
              "expand", "as_strided", "t", "transpose", "permute", "detach", "alias", "select", "slice",
              "unsqueeze", "squeeze", "reshape", "_reshape_alias", "split", "split_with_sizes", "unbind",
              "lift_fresh", "clone_if_view"}


def _count_launches(monkeypatch, step):
    """(launches, aten ops that launch, syncs, Triton kernels) of step(): every Triton launch plus every aten
    op outside _NO_KERNEL (ops the interpreter itself runs inside a launch are not counted);
    syncs = the aten ops that copy a device value to the host (.item(), bool(), int())."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import vito_fast.kernels.info_nce as kernels

    inside, triton_launches, ops = [False], [], []

    class Counting:
        def __init__(self, fn, name):
            self.fn, self.name = fn, name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                triton_launches.append(self.name)
                inside[0] = True
                try:
                    return self.fn[grid](*args, **kwargs)
                finally:
                    inside[0] = False
            return launch

    for name in [name for name in dir(kernels) if name.endswith("_kernel")]:
        monkeypatch.setattr(kernels, name, Counting(getattr(kernels, name), name))

    class CountOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not inside[0] and func.__name__.split(".")[0] not in _NO_KERNEL:
                ops.append(func.__name__)
            return func(*args, **(kwargs or {}))

    with CountOps():
        step()
    syncs = [op for op in ops if op.startswith(("_local_scalar_dense", "item"))]
    return len(triton_launches) + len(ops), ops, syncs, triton_launches


# (symmetric, k needs grad, labels given, reduction, deterministic, launches fwd+bwd). Before
# issue 15 (a): 58 (55 PyTorch ops around 3 kernels), 46 with k frozen, 76 symmetric, 62 with
# labels (and a host sync).
LAUNCH_CASES = [
    (False, True, False, "mean", True, 5),  # the default: prologue, sweep, torch mean | gq, gk sweeps
    (False, True, False, "mean", False, 5),  # prologue, sweep | dq̂ zeroing, one sweep, dq kernel
    (False, False, False, "mean", True, 4),  # VITO's target keys: prologue, sweep, mean | gq sweep
    (False, False, False, "mean", False, 3),
    (False, True, True, "none", False, 5),
    (True, True, False, "sum", False, 5),  # prologue, sweep, column merge | gq, gk sweeps
    (True, True, False, "mean", True, 6),
]


@pytest.fixture
def one_sweep_dtype(kernel_device) -> torch.dtype:
    """The input dtype whose deterministic=False backward takes the one sweep (atomic dq) on
    kernel_device: bf16 on a GPU; float32 on the interpreter (which runs bf16 in float32)."""
    import vito_fast.kernels.info_nce as kernels

    dtype = torch.bfloat16 if kernel_device == "cuda" else torch.float32
    assert kernels._one_sweep_fits(dtype, 64, symmetric=False), f"no one-sweep backward in {dtype} here"
    return dtype


@pytest.mark.parametrize("symmetric,need_k,with_labels,reduction,deterministic,expected", LAUNCH_CASES)
def test_triton_launches_and_no_host_sync(kernel_device, one_sweep_dtype, monkeypatch, symmetric, need_k,
                                          with_labels, reduction, deterministic, expected):
    """Forward + backward of the Triton path in ≤ 6 launches, none of them a host sync (labels
    are checked in the kernels)."""
    q, k = _inputs(48, 48, 16, dtype=one_sweep_dtype)  # N a multiple of 16: the one sweep runs
    q, k = q.to(kernel_device).requires_grad_(), k.to(kernel_device).requires_grad_(need_k)
    labels = torch.randint(0, 48, (48,), device=kernel_device) if with_labels else None
    upstream = torch.ones(48 if reduction == "none" else (), device=kernel_device)

    def step():
        loss = info_nce(q, k, 0.1, labels=labels, symmetric=symmetric, reduction=reduction,
                        backend="triton", deterministic=deterministic)
        torch.autograd.grad(loss, (q, k) if need_k else (q,), upstream)

    launches, ops, syncs, _ = _count_launches(monkeypatch, step)
    assert not syncs, f"host syncs: {syncs}"
    assert launches == expected <= 6, f"{launches} launches (aten: {ops})"


def test_launch_count_sees_pytorch_ops(kernel_device, monkeypatch):
    """The count is not blind: the eager reference's forward + backward makes far more launches."""
    q, k = _inputs(40, 40, 16, dtype=torch.float32)
    q, k = q.to(kernel_device).requires_grad_(), k.to(kernel_device).requires_grad_()
    launches, ops, _, _ = _count_launches(
        monkeypatch, lambda: torch.autograd.grad(info_nce_reference(q, k, 0.1), (q, k)))
    assert launches > 10 and "mm.default" in ops


@pytest.mark.parametrize("deterministic", [False, True])
def test_triton_invalid_labels_give_nan_without_a_host_check(kernel_device, deterministic):
    """Labels outside [0, M) on the Triton path: NaN in that row's loss, in the reduced loss and in
    the gradients, no exception and no sync; the host check raises in debug mode."""
    q, k = _inputs(17, 33, 8, dtype=torch.float32)
    q, k = q.to(kernel_device).requires_grad_(), k.to(kernel_device).requires_grad_()
    labels = torch.randint(0, 33, (17,), device=kernel_device)
    labels[5] = 33
    per_row = info_nce(q, k, 0.1, labels=labels, reduction="none", backend="triton", deterministic=deterministic)
    assert torch.isnan(per_row[5]) and torch.isfinite(per_row[torch.arange(17) != 5]).all()
    good = labels.clone()
    good[5] = 0
    torch.testing.assert_close(per_row[torch.arange(17) != 5],
                               info_nce_reference(q, k, 0.1, labels=good, reduction="none")[torch.arange(17) != 5])
    loss = info_nce(q, k, 0.1, labels=labels, backend="triton", deterministic=deterministic)
    dq, dk = torch.autograd.grad(loss, (q, k))
    assert torch.isnan(loss) and torch.isnan(dq[5]).all() and torch.isnan(dk).any()
    labels[5] = -1
    assert torch.isnan(info_nce(q, k, 0.1, labels=labels, reduction="none", backend="triton")[5])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 33\)"):
        info_nce(q, k, 0.1, labels=labels, backend="triton", debug=True)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the interpreter's numpy on NaN
def test_triton_debug_env_checks_on_the_host(kernel_device, monkeypatch):
    q, k = _inputs(5, 7, 3, dtype=torch.float32)
    q, k = q.to(kernel_device), k.to(kernel_device)
    monkeypatch.setenv("VITO_FAST_DEBUG", "1")
    with pytest.raises(ValueError, match="labels must lie in"):
        info_nce(q, k, 0.1, labels=torch.tensor([0, 1, 2, 3, 7], device=kernel_device), backend="triton")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        info_nce(q, k, torch.tensor(0.0, device=kernel_device), backend="triton")
    monkeypatch.setenv("VITO_FAST_DEBUG", "0")  # the device check: τ ≤ 0 as a tensor gives NaN
    assert torch.isnan(info_nce(q, k, torch.tensor(-0.1, device=kernel_device), backend="triton"))


def test_triton_one_sweep_matches_deterministic_and_deterministic_repeats(kernel_device, one_sweep_dtype,
                                                                          monkeypatch):
    q, k = _inputs(64, 67, 24, dtype=one_sweep_dtype)
    q, k = q.to(kernel_device).requires_grad_(), k.to(kernel_device).requires_grad_()
    upstream = torch.randn(64, device=kernel_device)

    def run(deterministic):
        loss = info_nce(q, k, 0.1, reduction="none", backend="triton", deterministic=deterministic,
                        block_sizes=(16, 16, None))
        return [loss.detach()] + list(torch.autograd.grad(loss, (q, k), upstream))

    first, again = run(True), run(True)
    one_sweep = []
    _, _, _, kernels = _count_launches(monkeypatch, lambda: one_sweep.extend(run(False)))
    assert "_info_nce_dq_kernel" in kernels, kernels  # the atomic path ran
    close = dict(atol=1e-5, rtol=1e-5) if one_sweep_dtype == torch.float32 else {}  # bf16: a rounding apart
    for exact, repeat, atomic in zip(first, again, one_sweep):
        assert torch.equal(exact, repeat)
        torch.testing.assert_close(atomic, exact, **close)


# The sm_90 compiles of every launched variant (registers, spills, duplicated wgmma) are checked
# in tests/test_compile_report.py, with the specialisations real launches get.


# The reference itself, at every odd size of the issue (float64 gradcheck at the small ones).
@pytest.mark.parametrize("n,m,d,symmetric", [(1, 1, 1, False), (1, 1, 1, True), (3, 17, 3, False),
                                              (3, 3, 17, False), (3, 3, 17, True), (17, 17, 1, True)])
def test_reference_gradcheck(n, m, d, symmetric):
    q, k = _inputs(n, m, d)
    tau = torch.tensor(0.3, dtype=torch.float64)
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda q, k, t: info_nce_reference(q, k, t, symmetric=symmetric, reduction=reduction),
            (q.requires_grad_(), k.requires_grad_(), tau.requires_grad_()), fast_mode=True)


@pytest.mark.parametrize("n,m,d", [(1, 257, 129), (67, 129, 257), (257, 257, 67), (129, 257, 1)])
def test_reference_matches_log_softmax_definition(n, m, d):
    """−log softmax(q̂·k̂ᵀ/τ)[i, label_i] written out, at the larger odd sizes."""
    q, k = _inputs(n, m, d)
    labels = torch.randint(0, m, (n,))
    tau = 0.07
    logits = (q / q.norm(dim=1, keepdim=True)) @ (k / k.norm(dim=1, keepdim=True)).T / tau
    expected = -(logits.log_softmax(1).gather(1, labels[:, None]).squeeze(1))
    torch.testing.assert_close(info_nce_reference(q, k, tau, labels=labels, reduction="none"), expected)
    torch.testing.assert_close(info_nce_reference(q, k, tau, labels=labels, reduction="sum"), expected.sum())


def test_auto_dispatch_uses_reference_on_cpu():
    q, k = _inputs(17, 17, 17, dtype=torch.float32)
    expected = info_nce_reference(q, k, 0.1, symmetric=True)
    assert torch.equal(info_nce(q, k, 0.1, symmetric=True), expected)
    assert torch.equal(info_nce(q, k, 0.1, symmetric=True, backend="torch"), expected)
    assert info_nce(q.double(), k.double()).dtype == torch.float64  # the reference takes float64


def test_public_api_names():
    import vito_fast

    assert vito_fast.info_nce is info_nce
    module = vito_fast.nn.InfoNCE(temperature=0.2)
    q, k = _inputs(5, 7, 3, dtype=torch.float32)
    torch.testing.assert_close(module(q, k), info_nce_reference(q, k, 0.2))
    with pytest.raises(ValueError, match="symmetric needs N == M"):
        vito_fast.nn.InfoNCE(symmetric=True, gather_distributed=True)


def test_triton_label_offset(kernel_device):
    """label_offset (a rank's keys inside gathered ones) == explicit labels offset + arange(N)."""
    q, k = _inputs(17, 40, 17, dtype=torch.float32)
    q, k = q.to(kernel_device).requires_grad_(), k.to(kernel_device).requires_grad_()
    labels = torch.arange(9, 26, device=kernel_device)
    ours = info_nce(q, k, 0.1, label_offset=9, backend="triton", reduction="none")
    ref = info_nce_reference(q, k, 0.1, labels=labels, reduction="none")
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(17, device=kernel_device)
    for mine, theirs in zip(torch.autograd.grad(ours, (q, k), upstream), torch.autograd.grad(ref, (q, k), upstream)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


BAD_INPUTS = [
    # (description, q shape, k shape, kwargs, error, message fragment)
    ("q not 2-D", (4,), (4, 3), {}, ValueError, "q must be 2-D"),
    ("k not 2-D", (4, 3), (4, 3, 1), {}, ValueError, "k must be 2-D"),
    ("D mismatch", (4, 3), (4, 5), {}, ValueError, "q has 3 columns but k has 5"),
    ("empty q", (0, 3), (4, 3), {}, ValueError, "q is empty"),
    ("empty D", (4, 0), (4, 0), {}, ValueError, "is empty"),
    ("temperature zero", (4, 3), (4, 3), {"temperature": 0.0}, ValueError, "temperature must be > 0"),
    ("temperature negative tensor", (4, 3), (4, 3), {"temperature": torch.tensor(-0.1)}, ValueError, "> 0"),
    ("M < N", (5, 3), (4, 3), {}, ValueError, "M >= N"),
    ("label_offset too big", (4, 3), (6, 3), {"label_offset": 3}, ValueError, "label_offset \\+ N <= M"),
    ("labels and offset", (4, 3), (6, 3), {"labels": torch.arange(4), "label_offset": 1}, ValueError, "not both"),
    ("labels out of range", (4, 3), (6, 3), {"labels": torch.tensor([0, 1, 2, 6])}, ValueError, "[0, 6)"),
    ("labels negative", (4, 3), (6, 3), {"labels": torch.tensor([0, -1, 2, 3])}, ValueError, "[0, 6)"),
    ("labels shape", (4, 3), (6, 3), {"labels": torch.tensor([0, 1])}, ValueError, "labels must have shape (4,)"),
    ("labels dtype", (4, 3), (6, 3), {"labels": torch.tensor([0, 1, 2, 3], dtype=torch.int32)}, TypeError, "int64"),
    ("symmetric N != M", (4, 3), (6, 3), {"symmetric": True}, ValueError, "symmetric needs N == M"),
    ("symmetric with labels", (4, 3), (4, 3), {"symmetric": True, "labels": torch.arange(4)}, ValueError, "symmetric"),
    ("reduction", (4, 3), (4, 3), {"reduction": "avg"}, ValueError, "reduction must be one of"),
    ("backend", (4, 3), (4, 3), {"backend": "cuda"}, ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("what,q_shape,k_shape,kwargs,error,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_input_checks(what, q_shape, k_shape, kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        info_nce(torch.randn(q_shape), torch.randn(k_shape), **kwargs)


def test_input_checks_dtype_and_device():
    with pytest.raises(TypeError, match="q is torch.float32 but k is torch.float16"):
        info_nce(torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float16))
    with pytest.raises(TypeError, match="the Triton backend takes"):
        info_nce(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64), backend="triton")
    with pytest.raises(ValueError, match="q is on cpu but k is on meta"):
        info_nce(torch.randn(4, 3), torch.randn(4, 3, device="meta"))


def test_forced_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        info_nce(torch.randn(4, 3), torch.randn(4, 3), backend="triton")


# ---- distributed: two gloo processes == one process on the concatenated batch ----------------

def _distributed_worker(rank, world, init_file, rows_per_rank, backend, result_dir, equal_batches=False):
    import torch.distributed as dist

    import vito_fast.distributed
    from vito_fast.nn.info_nce import InfoNCE

    if equal_batches:  # the promise of equal batches must spare the size exchange (and its host sync)
        def no_size_exchange(*args):
            raise AssertionError("sizes were gathered although every rank has the same batch")

        vito_fast.distributed._gather_sizes = no_size_exchange

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        inputs = torch.load(os.path.join(result_dir, "inputs.pt"))
        start = sum(rows_per_rank[:rank])
        rows = slice(start, start + rows_per_rank[rank])
        q = inputs["q"][rows].clone().requires_grad_()
        k = inputs["k"][rows].clone().requires_grad_()
        loss = InfoNCE(temperature=0.1, gather_distributed=True, backend=backend, equal_batches=equal_batches)(q, k)
        loss.backward()
        torch.save({"loss": loss.detach(), "dq": q.grad, "dk": k.grad},
                   os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rows_per_rank, equal_batches", [((5, 9), False), ((7, 7), True)])
def test_distributed_gather_matches_single_process(tmp_path, kernel_device, rows_per_rank, equal_batches):
    """Unequal per-rank batches (5 and 9 rows: sizes exchanged), or equal ones promised as such (no
    size exchange), gloo on CPU tensors: through the Triton kernels on a CPU-only machine
    (interpreter), through the reference where the kernels need CUDA tensors."""
    backend = "triton" if kernel_device == "cpu" else "torch"
    import torch.multiprocessing as mp

    total = sum(rows_per_rank)
    q, k = _inputs(total, total, 17, dtype=torch.float32)
    torch.save({"q": q, "k": k}, tmp_path / "inputs.pt")
    mp.spawn(_distributed_worker, nprocs=2, join=True,
             args=(2, str(tmp_path / "init"), list(rows_per_rank), backend, str(tmp_path), equal_batches))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    q_all, k_all = q.clone().requires_grad_(), k.clone().requires_grad_()
    # Rank r's mean loss weighs its own rows by 1/N_r: the global objective is Σ_r loss_r.
    weights = torch.cat([torch.full((n,), 1.0 / n) for n in rows_per_rank])
    per_row = info_nce_reference(q_all, k_all, 0.1, reduction="none")
    (per_row * weights).sum().backward()
    start = 0
    for n, result in zip(rows_per_rank, ranks):
        rows = slice(start, start + n)
        torch.testing.assert_close(result["loss"], per_row[rows].mean().detach(), atol=1e-5, rtol=1e-5)
        # Owners receive Σ over ranks of d loss_rank / d own keys (DDP then averages).
        torch.testing.assert_close(result["dq"], q_all.grad[rows], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(result["dk"], k_all.grad[rows], atol=1e-5, rtol=1e-4)
        start += n


# ---- GPU only: low precision with tensor cores, bigger shapes, the O(N + M) memory promise -----

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,m,d,symmetric", [(1000, 1000, 256, True), (777, 2049, 129, False), (4096, 4096, 128, False)])
def test_cuda_low_precision_rule(dtype, n, m, d, symmetric):
    _compare("cuda", n, m, d, dtype=dtype, temperature=0.1, symmetric=symmetric,
             random_labels=not symmetric)


@pytest.mark.cuda
def test_cuda_float32_multi_tile():
    _compare("cuda", 1023, 1025, 255, temperature=0.05, symmetric=False, random_labels=True)
    _compare("cuda", 513, 513, 67, temperature=0.2, symmetric=True, normalize=False, scale=3.0)


@pytest.mark.cuda
def test_cuda_memory_is_linear():
    """The issue's goal at 64k × 64k, D = 256: extra memory of a full pass ≤ 1.5 GB (eager: ~50 GB)."""
    n, d = 65536, 256
    q = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    for symmetric in (False, True):
        q.grad = k.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss = info_nce(q, k, 0.1, symmetric=symmetric)
        loss.backward()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        assert torch.isfinite(loss) and torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
        assert extra < 1.5e9, f"symmetric={symmetric}: extra memory {extra / 2**20:.0f} MiB"


@pytest.mark.cuda
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_step_launches_and_never_syncs(deterministic):
    """On the chip: forward + backward (bf16, 4k × 4k, k with gradient) under
    torch.cuda.set_sync_debug_mode("error") (a host sync raises), ≤ 6 kernels in the profiler."""
    q = torch.randn(4096, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(4096, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 4096, (4096,), device="cuda")
    step = lambda: torch.autograd.grad(  # noqa: E731
        info_nce(q, k, 0.1, labels=labels, deterministic=deterministic), (q, k))
    step()  # compile the kernels outside the count
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            step()
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    kernels = [event for event in profile.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    assert 0 < len(kernels) <= 6, [event.name for event in kernels]
