"""The VITO model: multi-stage ResNet trunk, attention pools, projector/predictor heads, EMA target.

May import nn, ops, reference, kernels and the base modules (errors, distributed); nothing above.
"""
from vito_fast.model.vito import VITO, Encoder, Trunk, mlp

__all__ = ["VITO", "Encoder", "Trunk", "mlp"]
