"""The model's settings, beside the model they build: ``VITO.from_config(ModelConfig(...))`` passes
every field by name (tests/test_model.py checks that each field is a ``VITO`` argument or one the
training loop reads). Plain data, no torch: ``vito_fast.train.config`` nests it in the run's config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

# Fields that the training loop reads rather than the model.
TRAINING_FIELDS = ("sync_bn",)


@dataclass
class ViTConfig:
    """A timm Vision Transformer's settings where they differ from the arch's (``model.arch=vit_*``).

    0 keeps timm's value for the arch: ``vit_small_patch16_224`` is patch 16, 384 wide, 12 blocks,
    6 heads. Other values build the same family smaller or larger (the tests' and the demo's tiny
    ViTs); the export says with which ``timm.create_model`` arguments the weights load.
    """

    patch_size: int = 0
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    drop_path: float = 0.0                       # stochastic depth rate, linear over the blocks (DINO: 0.1)
    # "exclude": the pools see the patch tokens only (an H×W grid); "include": the class/register
    # tokens as well (the map shown is the patch positions' share)
    prefix_tokens: str = "exclude"


@dataclass
class ModelConfig:
    arch: str = "resnet50"                       # a torchvision ResNet, or a timm ViT (vit_small_patch16_224, ...)
    width: int = 64                              # ResNets: channels of the first stage (64: torchvision's; 32: 1/4 compute)
    # trunk taps, one loss per tap: ResNet stages (layer1 … layer4) or ViT depths (block1 … blockN, the
    # output of the N-th block, 1-based: block8 and block12 are two thirds of the way and the last of ViT-S/B)
    stages: Tuple[str, ...] = ("layer3", "layer4")
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
    vit: ViTConfig = field(default_factory=ViTConfig)  # ViT archs only
