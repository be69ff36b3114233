"""The one rule that picks Triton or the PyTorch reference for every fused op."""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")

# Input dtypes the Triton kernels take (float32 accumulation for all of them).
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def auto_picks_triton(x: torch.Tensor) -> bool:
    """backend="auto"'s choice: Triton for CUDA tensors of TRITON_DTYPES. The one seam through which
    tests of the auto path (its first-use self-check, tests/test_verify.py) send CPU tensors to the
    interpreter, by replacing this function."""
    return x.is_cuda and x.dtype in TRITON_DTYPES


def use_triton(op: str, x: torch.Tensor, backend: str) -> bool:
    """True when ``op`` should run its Triton kernels on input ``x``.

    backend "auto": Triton for CUDA tensors of TRITON_DTYPES, the reference otherwise (float64, for
    gradcheck, stays on the reference); "torch": the reference; "triton": Triton, on CPU tensors
    only under Triton's interpreter, and not where VITO_FAST_INTERPRET_CPU_TENSORS=0 (the tests set
    it so that only a test that asks for the chip gets the interpreter, see tests/conftest.py).
    Raises when "triton" is forced where it cannot run.
    """
    if backend == "torch" or (backend == "auto" and not auto_picks_triton(x)):
        return False
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(f"{op}: the Triton backend takes {TRITON_DTYPES}, got {x.dtype}; use backend='torch'")
    if not x.is_cuda:
        from vito_fast.kernels._utils import interpreting

        if not interpreting():
            raise RuntimeError(f"{op}: backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set "
                               f"before triton is imported to run Triton's interpreter on CPU tensors; "
                               f"or use backend='auto'")
        if os.environ.get("VITO_FAST_INTERPRET_CPU_TENSORS", "1") == "0":
            raise RuntimeError(f"{op}: backend='triton' needs CUDA tensors: VITO_FAST_INTERPRET_CPU_TENSORS=0 "
                               f"keeps Triton's interpreter off CPU tensors (in the tests, ask for the "
                               f"kernel_device fixture and put the tensors on it); or use backend='auto'")
    return True
