"""The VITO model: a trunk tapped at several stages, attention pools, heads and an EMA target.

    online:  view → Trunk → per stage s: AttentionPool2d_s → projector_s → predictor_s → q_s
    target:  view → Trunk → per stage s: AttentionPool2d_s → projector_s              → k_s   (EMA, no grad)
    loss   = Σ_s ½ [ InfoNCE(q_s(view 1), k_s(view 2)) + InfoNCE(q_s(view 2), k_s(view 1)) ]

The trunk is a torchvision ResNet (``Trunk``, stages layer1 … layer4) or a timm Vision Transformer
(``vito_fast.model.vit.ViTTrunk``, stages block1 … blockN: depths instead of resolutions), chosen by
``arch`` (``make_trunk``); both hand the pools (B, C, H, W) maps.

Keys are gathered over all ranks when distributed (negatives = the global batch). The trunks run
in the memory format of their weights (``model.to(memory_format=torch.channels_last)``: the loop
does so on GPUs); inputs are converted to it.

Batch-norm policy (the paper is silent; a config-free choice documented here): both branches run
in training mode and normalise with batch statistics, as in BYOL; the two views go through each
trunk as one batch of 2B (one launch per layer instead of two), so the statistics span both views,
as in SimCLR; with ``sync_bn`` and several ranks they span the global batch
(``convert_sync_batchnorm``). The target's parameters are an EMA of the online ones; its buffers
(running mean/var, which only eval-mode use reads) are *copied* from the online network at each
EMA step, so an eval-mode target is consistent with the weights it averages. ViT trunks normalise
with LayerNorm: there, batch statistics live in the heads' BatchNorm1d only (as in MoCo v3).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torchvision
from torch import nn

from vito_fast.model.config import TRAINING_FIELDS, ModelConfig, ViTConfig
from vito_fast.model.vit import ViTTrunk, is_vit_arch
from vito_fast.nn.attention_pool import AttentionPool2d
from vito_fast.nn.info_nce import InfoNCE

STAGES = ("layer1", "layer2", "layer3", "layer4")


class _NarrowResNet(torchvision.models.ResNet):
    """torchvision's ResNet with every stage's width scaled by ``width / 64`` (stem included).

    torchvision builds the stages through ``_make_layer(block, planes)`` with planes 64, 128, 256,
    512; scaling ``planes`` there (and the stem before the first stage) keeps the blocks, names and
    initialisation of torchvision's code. ``fc`` is left out (the trunk never uses it).
    """

    def __init__(self, block, layers: List[int], width: int, **kwargs):
        self._width, self._stem_done = width, False
        super().__init__(block, layers, **kwargs)
        del self.fc

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
        if not self._stem_done:  # called first for layer1: the stem must output `width` channels
            self._stem_done = True
            self.inplanes = self._width
            self.conv1 = nn.Conv2d(3, self._width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(self._width)
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)


def build_resnet(arch: str, width: int = 64) -> torchvision.models.ResNet:
    """``torchvision.models.<arch>(weights=None)``; with ``width`` ≠ 64, the same network that much narrower."""
    resnet = getattr(torchvision.models, arch)(weights=None)
    if width == 64:
        return resnet
    if width < 8 or width % 8:
        raise ValueError(f"Trunk: width must be a multiple of 8 and at least 8, got {width}")
    if resnet.groups != 1 or resnet.base_width != 64:
        raise ValueError(f"Trunk: width applies to plain ResNets, not {arch} (grouped or wide blocks)")
    block = type(resnet.layer1[0])
    layers = [len(getattr(resnet, name)) for name in STAGES]
    return _NarrowResNet(block, layers, width)


class Trunk(nn.Module):
    """A torchvision ResNet without avgpool/fc, returning the feature maps of the tapped stages.

    Attribute names (conv1, bn1, layer1 …) are torchvision's, so ``state_dict()`` loads into
    ``torchvision.models.<arch>()`` with only ``fc`` (and any stage after the last tap) missing.
    ``width`` (default 64, torchvision's) scales every stage's channels: 32 is a quarter of the
    compute, for CPUs and small data; such weights load into ``build_resnet(arch, width)``.
    """

    def __init__(self, arch: str, stages: Sequence[str], width: int = 64):
        super().__init__()
        if not hasattr(torchvision.models, arch) or not arch.startswith(("resnet", "resnext", "wide_resnet")):
            raise ValueError(f"Trunk: arch {arch!r} is not a torchvision ResNet "
                             f"(e.g. resnet18, resnet50, resnext50_32x4d, wide_resnet50_2)")
        unknown = [s for s in stages if s not in STAGES]
        if not stages or unknown:
            raise ValueError(f"Trunk: stages must be a non-empty subset of {STAGES}, got {tuple(stages)}")
        resnet = build_resnet(arch, width)
        self.arch, self.width = arch, width
        self.stages = tuple(sorted(stages, key=STAGES.index))
        last = STAGES.index(self.stages[-1])
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        for name in STAGES[: last + 1]:  # stages after the last tap would get no gradient
            self.add_module(name, getattr(resnet, name))
        self.stage_names = STAGES[: last + 1]

    def channels(self, stage: str) -> int:
        block = getattr(self, stage)[-1]
        return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features

    def input_memory_format(self) -> torch.memory_format:
        """channels_last when the trunk's weights are (``model.to(memory_format=...)``), else contiguous."""
        weight = self.conv1.weight
        return torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format

    def attention_on_grid(self, attention: torch.Tensor, image_hw) -> torch.Tensor:
        """A pool's attention (B, H, W) as a map over the stage's grid: itself, for a ResNet."""
        return attention

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        taps = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.stages:
                taps.append(x)
        return taps


def make_trunk(arch: str, stages: Sequence[str], width: int = 64, vit: Optional[ViTConfig] = None) -> nn.Module:
    """``Trunk`` for a torchvision ResNet, ``ViTTrunk`` for a timm ViT (``vit`` its settings)."""
    if not is_vit_arch(arch):
        return Trunk(arch, stages, width)
    if width != 64:
        raise ValueError(f"Trunk: model.width applies to ResNets; {arch}'s width is model.vit.embed_dim")
    return ViTTrunk(arch, stages, vit or ViTConfig())


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """BYOL's projector/predictor: Linear → BN → ReLU → Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class AveragePool2d(nn.Module):
    """Global average pooling (B, C, H, W) → ((B, C), None): the ablation of the attention pools."""

    def forward(self, h: torch.Tensor) -> Tuple[torch.Tensor, None]:
        return h.mean(dim=(2, 3)), None


def model_arguments(builder, config: ModelConfig) -> Dict[str, object]:
    """The fields of ``config`` that ``builder`` (VITO or Encoder) takes, by name; the training-only
    fields (TRAINING_FIELDS) and those the builder does not take stay out."""
    taken = inspect.signature(builder).parameters
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name in taken and f.name not in TRAINING_FIELDS}


class EncoderOutput(NamedTuple):
    """What ``Encoder`` returns, per tapped stage (in the trunk's order)."""

    projections: List[torch.Tensor]      # (B, proj_dim)
    attention: Dict[str, torch.Tensor]   # {stage: (B, H, W) float32, with its graph}; {} for average pools


class Encoder(nn.Module):
    """Trunk + one pool and one projector per tapped stage (the part the target copies)."""

    @classmethod
    def from_config(cls, config: ModelConfig) -> "Encoder":
        return cls(**model_arguments(cls, config))

    def __init__(self, arch: str, stages: Sequence[str], pool_hidden: int, proj_hidden: int,
                 proj_dim: int, backend: str, pooling: str = "attention", width: int = 64,
                 vit: Optional[ViTConfig] = None):
        super().__init__()
        if pooling not in ("attention", "average"):
            raise ValueError(f"Encoder: pooling must be 'attention' or 'average', got {pooling!r}")
        self.trunk = make_trunk(arch, stages, width, vit)
        widths = [self.trunk.channels(s) for s in self.trunk.stages]
        self.pools = nn.ModuleList(AttentionPool2d(c, pool_hidden, backend=backend) if pooling == "attention"
                                   else AveragePool2d() for c in widths)
        self.projectors = nn.ModuleList(mlp(c, proj_hidden, proj_dim) for c in widths)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """x (B, 3, S, S) → per stage a projection (B, proj_dim), and the attention pools' maps."""
        projections, attention = [], {}
        for stage, h, pool, proj in zip(self.trunk.stages, self.trunk(x), self.pools, self.projectors):
            pooled, stage_attention = pool(h)
            projections.append(proj(pooled))
            if stage_attention is not None:
                attention[stage] = self.trunk.attention_on_grid(stage_attention, x.shape[-2:])
        return EncoderOutput(projections, attention)


class VITO(nn.Module):
    """Online encoder + predictors, EMA target encoder, and the multi-scale contrastive loss."""

    def __init__(self, arch: str = "resnet50", stages: Sequence[str] = ("layer3", "layer4"),
                 pool_hidden: int = 512, proj_hidden: int = 4096, proj_dim: int = 256,
                 pred_hidden: int = 4096, temperature: float = 0.1, backend: str = "auto",
                 gather_distributed: bool = True, pooling: str = "attention", width: int = 64,
                 equal_batches: bool = False, attention_entropy_floor: float = 0.0,
                 vit: Optional[ViTConfig] = None):
        super().__init__()
        if not 0.0 <= attention_entropy_floor < 1.0:
            raise ValueError(f"VITO: attention_entropy_floor must be in [0, 1), not {attention_entropy_floor}")
        self.attention_entropy_floor = attention_entropy_floor
        self.online = Encoder(arch, stages, pool_hidden, proj_hidden, proj_dim, backend, pooling, width, vit)
        self.predictors = nn.ModuleList(mlp(proj_dim, pred_hidden, proj_dim) for _ in self.online.pools)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.stages = self.online.trunk.stages
        self._attention_maps: Dict[str, torch.Tensor] = {}  # detached: for logging and pictures, not a loss
        # equal_batches: every rank brings the same number of pairs (training's fixed per-rank batch),
        # so the key gather needs no size exchange and no host synchronisation
        self.criterion = InfoNCE(temperature, gather_distributed=gather_distributed, backend=backend,
                                 equal_batches=equal_batches)

    @classmethod
    def from_config(cls, config: ModelConfig) -> "VITO":
        """Every model field of ``config`` by name; the training loop's batches have the same size on
        every rank (``data.batch_size``), so the loss gathers keys without exchanging sizes."""
        return cls(**model_arguments(cls, config), equal_batches=True)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """view1, view2 (B, 3, S, S) → (total loss, {stage: loss}); all float32 scalars."""
        batch = view1.shape[0]
        # One trunk pass per branch (BN statistics span both views), in the trunk's memory format.
        views = torch.cat([view1, view2]).contiguous(memory_format=self.memory_format())
        # Online branch: trunk → pool → projector → predictor, per stage.
        online = self.online(views)
        queries = [pred(z) for z, pred in zip(online.projections, self.predictors)]
        # Target branch: the same without predictor, no graph.
        with torch.no_grad():
            keys = [k.detach() for k in self.target(views).projections]
        # Loss: each view's prediction against the other view's target key, both ways, per stage.
        losses = {}
        for stage, q, k in zip(self.stages, queries, keys):
            # The heads' dtype goes to InfoNCE: bf16 under CUDA autocast (the kernels' tensor-core
            # path, float32 accumulation and loss), float32 on the CPU.
            k = k.to(q.dtype)
            q1, q2, k1, k2 = q[:batch], q[batch:], k[:batch], k[batch:]
            losses[stage] = 0.5 * (self.criterion(q1, k2) + self.criterion(q2, k1))
        total = sum(losses.values())
        if self.attention_entropy_floor > 0 and self.training:
            total = total + self.attention_entropy_loss(online.attention)
        self._attention_maps = {stage: maps.detach() for stage, maps in online.attention.items()}
        return total, losses

    def attention_entropy_loss(self, attention: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ_stages mean over images of relu(floor · log(H·W) − entropy of the attention map) (nats),
        for ``attention`` {stage: (B, H, W)} as ``Encoder`` returns it.

        Zero while every map is spread enough; it only pushes back maps that collapse towards one
        peak. Average pools (no maps) contribute nothing."""
        total = torch.zeros((), device=self.online.projectors[0][0].weight.device)
        for stage in self.stages:
            if stage not in attention:
                continue
            flat = attention[stage].float().flatten(1)
            entropy = -(flat * flat.clamp_min(1e-12).log()).sum(dim=1)
            floor = self.attention_entropy_floor * math.log(flat.shape[1])
            total = total + torch.relu(floor - entropy).mean()
        return total

    def memory_format(self) -> torch.memory_format:
        """channels_last when the trunk's weights are (``model.to(memory_format=...)``), else contiguous."""
        return self.online.trunk.input_memory_format()

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target ← momentum · target + (1 − momentum) · online (one fused foreach op); buffers copied."""
        online = [p for p in self.online.parameters()]
        target = [p for p in self.target.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - momentum)
        torch._foreach_copy_(list(self.target.buffers()), list(self.online.buffers()))

    def attention_maps(self) -> Dict[str, torch.Tensor]:
        """The online pools' attention of the last forward, per stage: (2B, H, W) float32 (views 1 then 2),
        detached; {} before the first forward and for average pools."""
        return dict(self._attention_maps)

    def trunk_state_dict(self) -> Dict[str, torch.Tensor]:
        """The online trunk's weights under torchvision's names (a ViT's under ``vit.`` + timm's)."""
        return {k: v.detach().clone() for k, v in self.online.trunk.state_dict().items()}
