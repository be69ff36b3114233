"""ViT trunks: a timm Vision Transformer tapped at several depths, its tokens as (B, C, H, W) grids.

A plain ViT has no resolution pyramid, so VITO's scales become depths: ``block8`` is the output of
the 8th block (1-based; timm's index 7). Every tap goes through the ViT's final norm (as DINOv2's
``get_intermediate_layers(norm=True)`` and timm's ``forward_intermediates(norm=True)`` do), so the
last tap is exactly ``forward_features``. The patch tokens (B, N, C) of a tap are viewed as an H×W
grid (B, C, H, W) whose channels are the innermost dimension: the attention pool's channels-last
path, with no copy (``token_grid``). Class and register tokens stay out of the grid unless
``prefix_tokens="include"``: then all N tokens are one row, (B, C, 1, N), also without a copy.

The weights are timm's own module tree (``ViTTrunk.vit``), built with ``pretrained=False`` (nothing is
downloaded), ``num_classes=0`` and ``dynamic_img_size=True``: the position embeddings keep the arch's
grid (14×14 for ``*_patch16_224``) and are interpolated to the input's, so exported weights load
into ``timm.create_model(arch, num_classes=0)`` while training runs at any size.

timm is an optional dependency (``pip install 'vito_fast[vit]'``); only building a ViT needs it.
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence

import torch
from torch import nn

from vito_fast.model.config import ViTConfig

PREFIX_TOKENS = ("exclude", "include")
INSTALL_HINT = "pip install 'vito_fast[vit]'"
_BLOCK = re.compile(r"^block([1-9][0-9]*)$")


def is_vit_arch(arch: str) -> bool:
    """Whether ``arch`` names a timm model rather than a torchvision ResNet (decided without timm)."""
    return not arch.startswith(("resnet", "resnext", "wide_resnet"))


def require_timm():
    """The timm module, or ImportError in one line that says how to install it."""
    try:
        import timm
    except ImportError:
        raise ImportError(f"ViT trunks need timm: {INSTALL_HINT}") from None
    return timm


def timm_arguments(settings: ViTConfig) -> Dict[str, object]:
    """The ``timm.create_model`` keywords (beyond the arch's) that build this trunk's ViT."""
    arguments: Dict[str, object] = {"num_classes": 0}
    for name in ("patch_size", "embed_dim", "depth", "num_heads"):
        value = getattr(settings, name)
        if value:
            arguments[name] = value
    return arguments


def build_vit(arch: str, settings: ViTConfig = ViTConfig()) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True, ...)``: a timm
    VisionTransformer with timm's initialisation (the global torch seed decides it)."""
    timm = require_timm()
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(arch):
        raise ValueError(f"Trunk: arch {arch!r} is neither a torchvision ResNet (resnet18, resnet50, ...) nor a "
                         f"timm model (e.g. vit_small_patch16_224, vit_base_patch16_224)")
    if settings.prefix_tokens not in PREFIX_TOKENS:
        raise ValueError(f"Trunk: model.vit.prefix_tokens must be one of {PREFIX_TOKENS}, "
                         f"not {settings.prefix_tokens!r}")
    vit = timm.create_model(arch, pretrained=False, dynamic_img_size=True, drop_path_rate=settings.drop_path,
                            **timm_arguments(settings))
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"Trunk: timm's {arch!r} is a {type(vit).__name__}, not a VisionTransformer; ViT trunks "
                         f"take timm's vit_*/deit_* models (e.g. vit_small_patch16_224)")
    return vit


def block_indices(stages: Sequence[str], depth: int, arch: str) -> List[int]:
    """0-based block indices of stage names ``block1`` … ``block{depth}``, in order; ValueError naming the fix."""
    indices = []
    for stage in stages:
        match = _BLOCK.match(stage)
        if match is None or not 1 <= int(match.group(1)) <= depth:
            example = f"[block{max(1, round(2 * depth / 3))},block{depth}]"
            raise ValueError(f"Trunk: {arch} has {depth} blocks; its stages are block1 … block{depth} (the output "
                             f"of that block), not {stage!r}: e.g. model.stages={example}, or --preset vit_s16")
        indices.append(int(match.group(1)) - 1)
    if not indices or len(set(indices)) != len(indices):
        raise ValueError(f"Trunk: stages must be distinct blocks, got {tuple(stages)}")
    return sorted(indices)


def token_grid(tokens: torch.Tensor, prefix: int, height: int, width: int, include_prefix: bool) -> torch.Tensor:
    """Tokens (B, prefix + H·W, C) as a (B, C, H, W) view with channels innermost (no copy): the patch
    tokens as their grid, or with ``include_prefix`` every token as one row, (B, C, 1, prefix + H·W)."""
    batch, count, channels = tokens.shape
    if include_prefix:
        return tokens.unsqueeze(1).permute(0, 3, 1, 2)  # (B, 1, N, C) -> (B, C, 1, N)
    return tokens[:, prefix:].reshape(batch, height, width, channels).permute(0, 3, 1, 2)


class ViTTrunk(nn.Module):
    """A timm VisionTransformer returning the token grids of the tapped blocks, finally normed.

    ``stages`` name blocks (``block8``); blocks after the last tap are dropped (they would get no
    gradient), so the export then lacks them. ``state_dict()`` is timm's under ``vit.``.
    """

    def __init__(self, arch: str, stages: Sequence[str], settings: ViTConfig = ViTConfig()):
        super().__init__()
        self.vit = build_vit(arch, settings)
        self.arch, self.settings = arch, settings
        self.depth = len(self.vit.blocks)
        self.indices = block_indices(stages, self.depth, arch)
        self.stages = tuple(f"block{index + 1}" for index in self.indices)
        if self.indices[-1] + 1 < self.depth:
            self.vit.blocks = self.vit.blocks[: self.indices[-1] + 1]
        self.include_prefix = settings.prefix_tokens == "include"
        self.patch_size = tuple(self.vit.patch_embed.patch_size)

    def channels(self, stage: str) -> int:
        return int(self.vit.embed_dim)

    def input_memory_format(self) -> torch.memory_format:
        """channels_last when the patch embedding's weights are, else contiguous."""
        weight = self.vit.patch_embed.proj.weight
        return torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format

    def grid_size(self, height: int, width: int) -> tuple:
        """(rows, columns) of patch tokens for an input of height × width pixels."""
        return height // self.patch_size[0], width // self.patch_size[1]

    def attention_on_grid(self, attention: torch.Tensor, image_hw) -> torch.Tensor:
        """A pool's attention as a map over the patch grid, (B, H, W): with ``prefix_tokens="include"``
        (attention (B, 1, prefix + H·W)) the patch positions' share, which sums to less than 1."""
        if not self.include_prefix:
            return attention
        rows, columns = self.grid_size(*image_hw)
        return attention[:, 0, self.vit.num_prefix_tokens:].reshape(attention.shape[0], rows, columns)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x (B, 3, S, S') → per tapped block, normed tokens as a (B, C, S/p, S'/p) grid view (see module doc).

        timm's ``forward_intermediates`` (public API): patch embedding, position embedding interpolated
        to the grid, prefix tokens, the blocks, each tap through the final norm. Pixels past the last
        whole patch (a size that is no multiple of it) are left out, as a strided convolution leaves
        them. With ``prefix_tokens="include"`` the prefix and patch tokens are joined again (a copy)."""
        vit = self.vit
        rows, columns = self.grid_size(x.shape[-2], x.shape[-1])
        x = x[..., : rows * self.patch_size[0], : columns * self.patch_size[1]]
        taps = vit.forward_intermediates(x, indices=list(self.indices), return_prefix_tokens=self.include_prefix,
                                         norm=True, output_fmt="NLC", intermediates_only=True)
        if self.include_prefix and vit.num_prefix_tokens:
            return [token_grid(torch.cat([prefix, patches], dim=1), vit.num_prefix_tokens, rows, columns, True)
                    for patches, prefix in taps]
        # (B, H·W, C) views of the (B, prefix + H·W, C) tokens: a grid view, no copy
        return [patches.reshape(patches.shape[0], rows, columns, -1).permute(0, 3, 1, 2) for patches in taps]


def timm_state_dict(trunk_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A ViT trunk's weights (``vit.*``, as ``Encoder.trunk`` holds them) under timm's own names."""
    return {key[len("vit."):]: value for key, value in trunk_state.items() if key.startswith("vit.")}
