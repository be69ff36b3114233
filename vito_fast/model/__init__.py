"""The VITO model: multi-stage ResNet trunk, attention pools, projector/predictor heads, EMA target.

May import nn, ops, reference, kernels and the base modules (errors, distributed); nothing above.
Loaded lazily, so that ``vito_fast.model.config`` (plain settings) imports without torch.
"""
from vito_fast._lazy import lazy_exports

__all__ = ["VITO", "Encoder", "Trunk", "mlp", "ModelConfig"]
__getattr__, __dir__ = lazy_exports(__name__, {"VITO": ".vito", "Encoder": ".vito", "Trunk": ".vito", "mlp": ".vito",
                                               "ModelConfig": ".config"})
