"""Pure-PyTorch (and NumPy) references, one module per op.

They are the CPU path, the ground truth of the tests and a provider in the benchmarks: there is
never a second copy of a reference anywhere else. May import torch and numpy only.
"""
