"""``AttentionPool2d``: learned attention pooling that replaces global average pooling."""
from __future__ import annotations

import math
from typing import Tuple

import torch

from vito_fast.ops.attention_pool import attention_pool


class AttentionPool2d(torch.nn.Module):
    """(pooled, attention) for h (B, C, H, W): attention (B, H, W) = softmax_HW(MLP(h)), float32,
    and pooled (B, C) = Σ_HW attention · h, in h's dtype; like ``vito_fast.attention_pool``.

    The MLP is two 1×1 convs C → hidden → 1 with a ReLU between (hidden_channels=0: one linear
    layer C → 1), initialised like ``nn.Conv2d``. The attention comes back with its graph (a loss
    on it trains the pool); the module keeps no state from a call. Parameters are cast to h's dtype
    on the fly, so the module works under bf16 autocast with float32 weights.
    """

    def __init__(self, in_channels: int, hidden_channels: int = 512, backend: str = "auto"):
        super().__init__()
        if in_channels <= 0 or hidden_channels < 0:
            raise ValueError(f"AttentionPool2d: need in_channels > 0 and hidden_channels >= 0, "
                             f"got {in_channels} and {hidden_channels}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.backend = backend
        if hidden_channels:
            self.w1 = torch.nn.Parameter(torch.empty(hidden_channels, in_channels))
            self.b1 = torch.nn.Parameter(torch.empty(hidden_channels))
        else:
            self.register_parameter("w1", None)
            self.register_parameter("b1", None)
        self.w2 = torch.nn.Parameter(torch.empty(hidden_channels or in_channels))
        self.b2 = torch.nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default: U(±1/sqrt(fan_in)) for a 1×1 kernel, weights and biases alike.
        for weight, bias in ((self.w1, self.b1), (self.w2, self.b2)):
            if weight is None:
                continue
            bound = 1.0 / math.sqrt(weight.shape[-1])
            torch.nn.init.uniform_(weight, -bound, bound)
            torch.nn.init.uniform_(bias, -bound, bound)

    def forward(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        cast = lambda p: None if p is None else p.to(h.dtype)  # noqa: E731
        return attention_pool(h, cast(self.w1), cast(self.b1), cast(self.w2), cast(self.b2), backend=self.backend)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}"
