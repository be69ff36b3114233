"""Autograd functions and the functional API that picks Triton or the PyTorch reference.

May import reference and vito_fast.kernels (and the base modules); nothing above.
"""
