"""The optimiser a run's config names (``optim.optimizer``) and the values it takes at each step.

- ``lars``: the ResNet recipe (BYOL, DetCon; ``vito_fast.train.lars``): weights decayed and
  trust-scaled, biases and norms plain SGD momentum.
- ``adamw``: the ViT recipe (DINO, MoCo v3, I-JEPA): ``torch.optim.AdamW`` over two groups, one
  decayed (weight matrices and convolution kernels) and one not (biases, norm parameters, the
  attention pools' vectors, position embeddings and class/register tokens, as timm's
  ``no_weight_decay()`` and DINO's ``get_params_groups`` leave them).

Learning rate and weight decay are set on the groups before every step from pure functions of the
step (``vito_fast.train.schedules``); only the decayed group's weight decay follows the schedule.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from vito_fast.train.lars import LARS, param_groups

OPTIMIZERS = ("lars", "adamw")
# parameters that no recipe decays whatever their shape (timm's VisionTransformer.no_weight_decay())
UNDECAYED_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token")


def decays(name: str, parameter: torch.nn.Parameter) -> bool:
    """Whether AdamW decays a parameter: matrices and kernels, but no tokens or position embeddings."""
    return parameter.ndim > 1 and name.rsplit(".", 1)[-1] not in UNDECAYED_NAMES


def adamw_param_groups(model: torch.nn.Module) -> List[Dict]:
    """[decayed, not decayed] over the trainable parameters (the target has none)."""
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decayed if decays(name, parameter) else plain).append(parameter)
    return [{"params": decayed, "scheduled_decay": True}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, optim, device_type: str = "cpu") -> torch.optim.Optimizer:
    """The optimiser ``optim`` (an ``OptimConfig``) names, over ``model``'s trainable parameters; lr 0
    until ``set_step_values``."""
    if optim.optimizer == "lars":
        groups = param_groups(model)
        groups[0]["scheduled_decay"] = True
        return LARS(groups, weight_decay=optim.weight_decay, momentum=optim.momentum,
                    trust_coefficient=optim.trust_coefficient)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(adamw_param_groups(model), lr=0.0, betas=tuple(optim.betas),
                                 weight_decay=optim.weight_decay, fused=device_type == "cuda")
    raise ValueError(f"optim.optimizer must be one of {OPTIMIZERS}, not {optim.optimizer!r}")


def set_step_values(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Every group's learning rate; the decayed group's weight decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("scheduled_decay"):
            group["weight_decay"] = weight_decay
