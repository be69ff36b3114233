"""LARS (You et al. 2017) as used by BYOL / moco-v3: SGD momentum on a layer-wise trust-scaled update.

Per parameter p with gradient g, for parameters in a group with ``adapt=True``:

    u = g + wd · p;   u ← u · η‖p‖/‖u‖ (when both norms are > 0);   v ← μ v + u;   p ← p − lr · v

Groups with ``adapt=False`` (biases and norm parameters, see ``param_groups``) get neither weight
decay nor trust scaling: plain SGD momentum. Parameters and gradients are float32 (autocast leaves
parameters alone); gradients are read, never modified.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

import torch


def param_groups(model: torch.nn.Module) -> List[Dict]:
    """Two groups: weights of convs/linears (decay + adaptation) and the rest (biases, BN, scalars)."""
    adapted, plain = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        # Biases, BN/LN affine parameters and attention-pool vectors (w2, b2) are ≤ 1-D.
        (plain if parameter.ndim <= 1 else adapted).append(parameter)
    return [{"params": adapted, "adapt": True}, {"params": plain, "adapt": False, "weight_decay": 0.0}]


class LARS(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 1e-6,
                 momentum: float = 0.9, trust_coefficient: float = 1e-3):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        trust_coefficient=trust_coefficient, adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["adapt"]:
                # u = g + wd·p, then u·η‖p‖/‖u‖, all in a handful of fused multi-tensor ops.
                updates = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                param_norms = torch.stack(torch._foreach_norm(params))
                update_norms = torch.stack(torch._foreach_norm(updates))
                trust = torch.where((param_norms > 0) & (update_norms > 0),
                                    group["trust_coefficient"] * param_norms / update_norms,
                                    torch.ones_like(param_norms))
                torch._foreach_mul_(updates, list(trust.unbind()))
            else:
                updates = grads
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss
