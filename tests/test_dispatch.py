"""use_triton (vito_fast/ops/_dispatch.py) and the guard that tests/conftest.py puts on it.

On a CPU-only machine Triton's interpreter takes CPU tensors only in a test that asks for the
``kernel_device`` fixture; anywhere else ``backend="triton"`` on CPU tensors raises as it does on a
GPU host. Outside the tests, ``TRITON_INTERPRET=1`` alone lets the interpreter take CPU tensors.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from vito_fast.ops.attention_pool import attention_pool
from vito_fast.ops.info_nce import info_nce

OPS = ["info_nce", "attention_pool"]


def forced_triton_call(op: str, device: str):
    """A small call of op with backend="triton" on tensors on device."""
    if op == "info_nce":
        q, k = torch.randn(5, 3, device=device), torch.randn(7, 3, device=device)
        return lambda: info_nce(q, k, 0.1, backend="triton")
    h, w2 = torch.randn(2, 4, 3, 5, device=device), torch.randn(4, device=device)
    return lambda: attention_pool(h, None, None, w2, backend="triton")[0]


@pytest.mark.parametrize("op", OPS)
def test_forced_triton_on_cpu_tensors_without_kernel_device_fails_as_on_a_gpu_host(op):
    with pytest.raises(RuntimeError, match=f"{op}: backend='triton' needs CUDA tensors"):
        forced_triton_call(op, "cpu")()


@pytest.mark.parametrize("op", OPS)
def test_forced_triton_on_kernel_device_runs(op, kernel_device):
    result = forced_triton_call(op, kernel_device)()
    assert result.device.type == kernel_device and torch.isfinite(result).all()


def test_auto_on_cpu_tensors_takes_the_reference_without_kernel_device():
    q, k, h, w2 = torch.randn(5, 3), torch.randn(7, 3), torch.randn(2, 4, 3, 5), torch.randn(4)
    assert torch.isfinite(info_nce(q, k, 0.1)) and torch.isfinite(attention_pool(h, None, None, w2)[0]).all()


def test_triton_interpret_alone_runs_the_kernels_on_cpu_tensors_outside_the_tests():
    env = {key: value for key, value in os.environ.items() if key != "VITO_FAST_INTERPRET_CPU_TENSORS"}
    code = ("import torch; from vito_fast.ops.info_nce import info_nce; "
            "assert torch.isfinite(info_nce(torch.randn(5, 3), torch.randn(7, 3), 0.1, backend='triton'))")
    result = subprocess.run([sys.executable, "-c", code], env=dict(env, TRITON_INTERPRET="1"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
