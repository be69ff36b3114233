"""The model's settings, beside the model they build: ``VITO.from_config(ModelConfig(...))`` passes
every field by name (tests/test_model.py checks that each field is a ``VITO`` argument or one the
training loop reads). Plain data, no torch: ``vito_fast.train.config`` nests it in the run's config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

# Fields that the training loop reads rather than the model.
TRAINING_FIELDS = ("sync_bn",)


@dataclass
class ModelConfig:
    arch: str = "resnet50"                       # any torchvision ResNet constructor name
    width: int = 64                              # channels of the first stage (64: torchvision's; 32: 1/4 compute)
    stages: Tuple[str, ...] = ("layer3", "layer4")  # trunk taps, one loss per tap
    pooling: str = "attention"                   # "attention" (VITO) or "average" (the GAP ablation)
    pool_hidden: int = 512                       # attention MLP width (0: linear logits)
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    temperature: float = 0.1
    # > 0: a loss keeps each attention map's entropy above this share of log(H·W) (0.5: spread over at
    # least √(H·W) positions), so that the pools cannot collapse to one peak (see model.vito)
    attention_entropy_floor: float = 0.0
    sync_bn: bool = True                         # batch statistics over all ranks when distributed
    backend: str = "auto"                        # ops: "auto" (fused on CUDA), "torch" (reference), "triton"
