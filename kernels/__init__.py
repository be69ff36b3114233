"""Triton kernels of vito_fast, installed as ``vito_fast.kernels``.

This package imports torch and triton only, never ``vito_fast``: the autograd wrappers in
``vito_fast.ops`` import from here, not the other way round.
"""
