"""Autograd functions and the functional API that picks Triton or the PyTorch reference."""
