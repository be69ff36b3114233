"""Encoders to evaluate: a pretraining run, exported trunk weights, or a random-init baseline.

``load_encoder`` returns an ``EvalEncoder``: a torchvision ResNet trunk mapping normalised images
(B, 3, H, W) to the feature maps of the chosen stages, a list of (B, C_s, h_s, w_s); for a timm ViT a
``ViTEvalEncoder``, whose maps are the patch tokens of the chosen blocks as grids (B, C, h, w). With
``pooling="attention"`` (runs only) it returns instead, per stage, the vector pooled by the run's
learned attention pool, (B, C_s), and keeps the attention of the last batch in
``last_attention`` ({stage: (B, h, w)}, detached).

Sources:
- a run directory (``vito-fast pretrain --out RUN``): ``RUN/checkpoint.pt`` holds the config and
  the online network; the model is rebuilt with ``VITO.from_config``;
- an exported weights file (``vito-fast export``: torchvision names, ``conv1.weight``,
  ``layer1.0...``, ``fc.*`` ignored; timm names for a ViT, ``patch_embed.proj.weight``, ``blocks.0...``,
  with ``arch``; or ``--format vito``, the whole online encoder and config), or a checkpoint file;
- ``random_init=True``: the same architecture with torchvision's initialisation and ``seed``.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from vito_fast.model.config import ViTConfig
from vito_fast.model.vit import ViTTrunk, is_vit_arch, require_timm
from vito_fast.model.vito import STAGES, Trunk
from vito_fast.train.run_folder import RunFolder, encoder_weights

PathLike = Union[str, os.PathLike]


class _Evaluated:
    """What an evaluation adds to a trunk (``Trunk`` or ``ViTTrunk``, the class it is mixed into)."""

    def _evaluate_with(self, pools: Optional[nn.ModuleList]) -> None:
        self.pools = pools  # one learned attention pool per stage, or None for feature maps
        self.last_attention: Dict[str, torch.Tensor] = {}
        self.run_config: Optional[dict] = None  # the run's config (nested dict) when loaded from a run

    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        maps = super().forward(images)
        if self.pools is None:
            return maps
        pooled = [pool(h) for pool, h in zip(self.pools, maps)]  # (vector, attention) per stage
        self.last_attention = {stage: self.attention_on_grid(attention, images.shape[-2:]).detach()
                               for stage, (_, attention) in zip(self.stages, pooled)}
        return [vector for vector, _ in pooled]


class EvalEncoder(_Evaluated, Trunk):
    """ResNet trunk → feature maps of ``stages`` (or their attention-pooled vectors).

    The trunk is the model's own ``Trunk`` (torchvision attribute names, so exported weights load
    straight into it); ``pools`` adds the run's learned attention pools on top.
    """

    def __init__(self, arch: str, stages: Sequence[str], pools: Optional[nn.ModuleList] = None, width: int = 64):
        Trunk.__init__(self, arch, stages, width)
        self._evaluate_with(pools)


class ViTEvalEncoder(_Evaluated, ViTTrunk):
    """ViT trunk → patch-token grids of ``stages`` (blocks; or their attention-pooled vectors).

    Without pools the grids hold the patch tokens only, whatever the run pooled; timm's names under
    ``vit.`` (exported timm weights load with that prefix)."""

    def __init__(self, arch: str, stages: Sequence[str], pools: Optional[nn.ModuleList] = None,
                 settings: ViTConfig = ViTConfig()):
        if pools is None:
            settings = dataclasses.replace(settings, prefix_tokens="exclude")
        ViTTrunk.__init__(self, arch, stages, settings)
        self._evaluate_with(pools)


def make_eval_encoder(arch: str, stages: Optional[Sequence[str]], pools: Optional[nn.ModuleList] = None,
                      width: int = 64, settings: Optional[ViTConfig] = None) -> Union[EvalEncoder, ViTEvalEncoder]:
    """The eval encoder of ``arch``; ``stages`` None: the last stage (layer4, or a ViT's last block)."""
    if not is_vit_arch(arch):
        return EvalEncoder(arch, stages or ("layer4",), pools, width)
    settings = settings or ViTConfig()
    if stages is None:
        depth = settings.depth or len(require_timm().create_model(arch, pretrained=False, num_classes=0).blocks)
        stages = (f"block{depth}",)
    return ViTEvalEncoder(arch, stages, pools, settings)


def stage_order(stages: Sequence[str]) -> List[str]:
    """Stages from the input to the output: layer1 … layer4, or block1 … blockN."""
    return sorted(stages, key=lambda stage: STAGES.index(stage) if stage in STAGES else int(stage[len("block"):]))


def vit_settings_of(state_dict: Dict[str, torch.Tensor]) -> Optional[ViTConfig]:
    """A ViT's patch size and depth read off timm-named weights; None when they are not a ViT's. The width
    must be the arch's: the number of heads is not in the weights (``check_vit_width``)."""
    if "patch_embed.proj.weight" not in state_dict:
        return None
    depth = 1 + max(int(key.split(".")[1]) for key in state_dict if key.startswith("blocks."))
    return ViTConfig(patch_size=int(state_dict["patch_embed.proj.weight"].shape[-1]), depth=depth)


def check_vit_width(encoder: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """ValueError when timm-named weights are wider or narrower than the encoder's arch."""
    kernel = state_dict.get("patch_embed.proj.weight")
    if isinstance(encoder, ViTEvalEncoder) and kernel is not None and kernel.shape[0] != encoder.vit.embed_dim:
        raise ValueError(f"{source}: the weights are {kernel.shape[0]} wide, {encoder.arch} is {encoder.vit.embed_dim}; "
                         "the number of heads is not in the weights: evaluate the run directory or a "
                         "`vito-fast export --format vito` file")


def load_trunk_weights(encoder: EvalEncoder, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Load torchvision-named trunk weights; stages after the encoder's last one and ``fc`` are ignored."""
    wanted = encoder.state_dict()
    if isinstance(encoder, ViTEvalEncoder) and not any(key.startswith("vit.") for key in state_dict):
        state_dict = {f"vit.{key}": value for key, value in state_dict.items()}  # timm's own names
    usable = {key: value for key, value in state_dict.items() if key in wanted}
    missing = [key for key in wanted if key not in usable and not key.startswith("pools.")]
    if missing:
        raise ValueError(f"{source}: {len(missing)} trunk weights of {encoder.arch} are missing "
                         f"(first: {missing[0]}); is it a {encoder.arch} trunk?")
    encoder.load_state_dict(usable, strict=False)


def load_encoder(source: Optional[PathLike] = None, *, random_init: bool = False, arch: Optional[str] = None,
                 stages: Optional[Sequence[str]] = None, pooling: str = "maps", seed: int = 0,
                 device: Union[str, torch.device] = "cpu") -> Union[EvalEncoder, ViTEvalEncoder]:
    """An encoder in eval mode from a run directory, a weights/checkpoint file, or random init.

    ``arch`` defaults to the run's (resnet18 otherwise); ``stages`` to the run's last stage
    (layer4, or a ViT's last block, otherwise), or all the run's stages with ``pooling="attention"`` (the run's learned
    pools, one per stage) instead of "maps" (feature maps).
    """
    if pooling not in ("maps", "attention"):
        raise ValueError(f"load_encoder: pooling must be 'maps' or 'attention', not {pooling!r}")
    if random_init == (source is not None):
        raise ValueError("load_encoder: give either a run directory / weights file or random_init=True")
    if random_init:
        if pooling == "attention":
            raise ValueError("load_encoder: pooling='attention' needs a run (the pools are learned)")
        torch.manual_seed(seed)
        return make_eval_encoder(arch or "resnet18", stages).to(device).eval()
    path = Path(source)
    checkpoint_file = RunFolder(path).checkpoint if path.is_dir() else path
    if not checkpoint_file.is_file():
        raise FileNotFoundError(f"{source}: needs a run directory from `vito-fast pretrain` (with checkpoint.pt) "
                                "or a weights file from `vito-fast export`")
    state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and "config" in state:  # RUN/checkpoint.pt
        return _encoder_from_run(encoder_weights(state), state["config"], str(checkpoint_file), arch, stages,
                                 pooling, device)
    if isinstance(state, dict) and state.get("format") == "vito-encoder":  # vito-fast export --format vito
        return _encoder_from_run(state["encoder"], state["config"], str(checkpoint_file), arch, stages, pooling,
                                 device)
    if pooling == "attention":
        raise ValueError(f"{source}: pooling='attention' needs a run directory or a `vito-fast export --format vito` "
                         "file; torchvision weights hold the trunk only")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{source}: not a state dict of trunk weights")
    encoder = make_eval_encoder(arch or "resnet18", stages, settings=vit_settings_of(state))
    check_vit_width(encoder, state, str(source))
    load_trunk_weights(encoder, state, str(source))
    return encoder.to(device).eval()


def _encoder_from_run(online: Dict[str, torch.Tensor], config: dict, source: str, arch: Optional[str],
                      stages: Optional[Sequence[str]], pooling: str, device) -> Union[EvalEncoder, ViTEvalEncoder]:
    """Build from the online encoder's weights (trunk.*, pools.*, projectors.*) and the run's config dict."""
    from vito_fast.train.config import from_dict

    model_config = config.get("model", {})
    run_arch = model_config.get("arch", "resnet50")
    run_width = int(model_config.get("width", 64))
    run_stages = tuple(model_config.get("stages", ("layer3", "layer4")))
    run_model = from_dict(config).model
    if arch is not None and arch != run_arch:
        raise ValueError(f"{source}: the run trained a {run_arch}, not a {arch}")
    pools = None
    if pooling == "attention":
        chosen_stages = tuple(stage_order(stages or run_stages))
        unknown = [stage for stage in chosen_stages if stage not in run_stages]
        if unknown:
            raise ValueError(f"{source}: the run has attention pools for {run_stages}, not {tuple(unknown)}")
        from vito_fast.model.vito import Encoder

        if run_model.pooling != "attention":
            raise ValueError(f"{source}: the run pools by {run_model.pooling}, so it has no attention maps")
        trained = Encoder.from_config(run_model)
        trained.load_state_dict(online)
        pools = nn.ModuleList(trained.pools[trained.trunk.stages.index(stage)] for stage in chosen_stages)
    else:
        chosen_stages = tuple(stages) if stages else run_stages[-1:]
    encoder = make_eval_encoder(run_arch, chosen_stages, pools, run_width, run_model.vit)
    load_trunk_weights(encoder, {key[len("trunk."):]: value for key, value in online.items()
                                 if key.startswith("trunk.")}, source)
    encoder.run_config = config
    return encoder.to(device).eval()
