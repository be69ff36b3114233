"""The first-use self-check of backend="auto" (vito_fast/ops/self_check.py) and `vito-fast bench verify`.

Kernels are broken on purpose by wrapping their launchers (a scaled loss, scaled gradients, an
exception). "auto" picks Triton for CUDA tensors only; on a CPU machine these tests replace
_dispatch.auto_picks_triton so that it picks the interpreter for the kernel_device's CPU tensors.
"""
from __future__ import annotations

import subprocess
import warnings

import pytest
import torch

import vito_fast.kernels.attention_pool as attention_pool_kernels
import vito_fast.kernels.info_nce as info_nce_kernels
from vito_fast.cli import bench
from vito_fast.ops import _dispatch, self_check, verify
from vito_fast.ops.attention_pool import attention_pool
from vito_fast.ops.info_nce import info_nce


@pytest.fixture
def auto_device(kernel_device, monkeypatch):
    """kernel_device, where backend="auto" runs Triton, with no verdicts before or after."""
    monkeypatch.setattr(_dispatch, "auto_picks_triton", lambda x: x.dtype in _dispatch.TRITON_DTYPES)
    monkeypatch.delenv("VITO_FAST_VERIFY", raising=False)
    self_check.forget_verdicts()
    yield kernel_device
    self_check.forget_verdicts()


def _info_nce_step(device, backend="auto", symmetric=False, **options):
    """Loss and gradients of q, k (40 × 24 rows, float32) drawn from a fixed seed."""
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(40, 24, generator=generator).to(device).requires_grad_()
    k = torch.randn(40, 24, generator=generator).to(device).requires_grad_()
    loss = info_nce(q, k, 0.1, symmetric=symmetric, backend=backend, **options)
    return [loss.detach(), *torch.autograd.grad(loss, (q, k))]


def _pool_step(device, backend="auto"):
    generator = torch.Generator().manual_seed(2)
    h = torch.randn(3, 16, 5, 7, generator=generator).to(device).requires_grad_()
    w2 = (torch.randn(16, generator=generator) / 4).to(device).requires_grad_()
    pooled, attn = attention_pool(h, None, None, w2, None, backend=backend)
    return [pooled.detach(), attn.detach(), *torch.autograd.grad(pooled.sum() + attn.square().sum(), (h, w2))]


def _equal(ours, theirs):
    return all(torch.equal(a, b) for a, b in zip(ours, theirs))


def _break_symmetric_loss(monkeypatch):
    """The InfoNCE forward returns 1.5 × its loss for symmetric calls only."""
    launcher = info_nce_kernels.info_nce_fwd

    def scaled(*args, **kwargs):
        loss, state = launcher(*args, **kwargs)
        return (loss * 1.5 if kwargs["symmetric"] else loss), state

    monkeypatch.setattr(info_nce_kernels, "info_nce_fwd", scaled)


def test_healthy_kernels_pass_silently_and_run_triton(auto_device):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours, pooled = _info_nce_step(auto_device), _pool_step(auto_device)
    assert _equal(ours, _info_nce_step(auto_device, backend="triton"))
    assert _equal(pooled, _pool_step(auto_device, backend="triton"))
    results = self_check.verdicts()
    assert [str(kind) for kind in results] == [
        f"info_nce[{auto_device}, float32, grads q,k, one-way, deterministic]",
        f"attention_pool[{auto_device}, float32, grads h,w2, linear]"]
    assert all(result.ok and result.backward is not None for result in results.values())


def test_a_mismatch_warns_once_and_that_kind_runs_the_reference(auto_device, monkeypatch):
    _break_symmetric_loss(monkeypatch)
    reference = _info_nce_step(auto_device, backend="torch", symmetric=True)
    with pytest.warns(RuntimeWarning) as caught:
        first = _info_nce_step(auto_device, symmetric=True)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"info_nce[{auto_device}, float32, grads q,k, symmetric, deterministic]" in message
    assert "MISMATCH: forward loss max error" in message and "> tolerance" in message
    assert "vito-fast bench verify" in message and "VITO_FAST_VERIFY=0" in message
    assert _equal(first, reference)  # the failing call's own result comes from the reference
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_way = _info_nce_step(auto_device)  # another kind: checked, passes, runs Triton
        assert _equal(one_way, _info_nce_step(auto_device, backend="triton"))
        checks = []
        monkeypatch.setattr(self_check, "check_info_nce", lambda *args, **kwargs: checks.append(args))
        assert _equal(_info_nce_step(auto_device, symmetric=True), reference)
        assert _equal(_info_nce_step(auto_device), one_way)
    assert not checks, "a judged kind is not checked again"
    statuses = {str(kind): result.status for kind, result in self_check.verdicts().items()}
    assert sorted(statuses.values()) == ["MISMATCH", "ok"]


def test_a_backward_mismatch_names_the_gradient(auto_device, monkeypatch):
    launcher = info_nce_kernels.info_nce_bwd

    def doubled_dk(*args, **kwargs):
        dq, dk, tau_partial = launcher(*args, **kwargs)
        return dq, None if dk is None else 2 * dk, tau_partial

    monkeypatch.setattr(info_nce_kernels, "info_nce_bwd", doubled_dk)
    with pytest.warns(RuntimeWarning, match=r"backward k max error"):
        first = _info_nce_step(auto_device, deterministic=False)
    assert _equal(first, _info_nce_step(auto_device, backend="torch"))


def test_an_exception_in_the_kernel_path_falls_back_with_a_warning(auto_device, monkeypatch):
    def no_kernel_image(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(attention_pool_kernels, "attention_pool_fwd", no_kernel_image)
    with pytest.warns(RuntimeWarning, match=r"attention_pool\[.*linear\].*error: RuntimeError: no kernel image"):
        first = _pool_step(auto_device)
    reference = _pool_step(auto_device, backend="torch")
    assert _equal(first, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _equal(_pool_step(auto_device), reference)


def test_verify_0_turns_the_check_off(auto_device, monkeypatch):
    _break_symmetric_loss(monkeypatch)
    monkeypatch.setenv("VITO_FAST_VERIFY", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = _info_nce_step(auto_device, symmetric=True)
    assert _equal(ours, _info_nce_step(auto_device, backend="triton", symmetric=True))  # the broken kernel ran
    assert not self_check.verdicts()


def test_no_check_while_tracing_and_a_known_verdict_holds(auto_device, monkeypatch):
    """While torch.compile traces, the kind stays unchecked (no host sync in the graph); dynamo
    traces the verdict lookup without a graph break."""
    def must_not_run(kind):
        raise AssertionError(f"{kind} checked while tracing")

    def loss_scale(q):
        kind = self_check.info_nce_kind(q, q, 0.1, False, True)
        return q * 2 if self_check.triton_trusted(kind, must_not_run) else q * 3

    q = torch.randn(4, 3, device=auto_device)
    compiled = torch.compile(loss_scale, fullgraph=True, backend="eager")
    assert torch.equal(compiled(q), q * 2) and not self_check.verdicts()
    kind = self_check.info_nce_kind(q, q, 0.1, False, True)
    failed = self_check.CheckResult(kind, self_check.MISMATCH, None, None, 0.0)
    with pytest.warns(RuntimeWarning):
        assert not self_check.triton_trusted(kind, lambda kind: failed)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(loss_scale, fullgraph=True, backend="eager")(q), q * 3)


@pytest.mark.cuda
def test_cuda_graph_capture_skips_the_check():
    q, k = torch.randn(256, 64, device="cuda"), torch.randn(256, 64, device="cuda")
    info_nce(q, k, backend="triton")  # compile the kernels outside the capture
    self_check.forget_verdicts()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = info_nce(q, k)
    assert not self_check.verdicts()
    graph.replay()
    torch.testing.assert_close(loss, info_nce(q, k, backend="torch"), atol=1e-5, rtol=1e-5)
    self_check.forget_verdicts()


def test_bench_verify_prints_the_table_and_fails_on_a_broken_kernel(auto_device, monkeypatch, capsys):
    launcher = attention_pool_kernels.attention_pool_fwd

    def scaled_pooled(*args, **kwargs):
        pooled, *rest = launcher(*args, **kwargs)
        return (pooled * 1.1, *rest)

    monkeypatch.setattr(attention_pool_kernels, "attention_pool_fwd", scaled_pooled)
    assert bench.main(["verify", "--op", "attention_pool", "--dtype", "float32"]) == 1
    out = capsys.readouterr().out
    assert "| kind | status | forward max error | backward max error | tolerance (fwd / bwd) | ms |" in out
    assert out.count("| MISMATCH |") == 4 and "(pooled)" in out
    assert not self_check.verdicts(), "bench verify judges, it does not set this process's verdicts"


def test_bench_verify_passes_on_healthy_kernels(auto_device, capsys):
    assert bench.main(["verify", "--op", "attention_pool", "--dtype", "float32"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| attention_pool[")]
    assert len(rows) == 4 and all("| ok |" in row for row in rows), rows


def test_bench_verify_without_a_gpu_reruns_itself_in_the_interpreter(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(verify, "interpreting", lambda: False)
    monkeypatch.setattr(subprocess, "call", lambda command, env: calls.append((command, env)) or 0)
    assert bench.main(["verify", "--op", "info_nce"]) == 0
    (command, env), = calls
    assert command[1:] == ["-m", "vito_fast", "bench", "verify", "--op", "info_nce"]
    assert env["TRITON_INTERPRET"] == "1"


def test_bench_verify_help():
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["verify", "--help"])
    assert exit_info.value.code == 0
