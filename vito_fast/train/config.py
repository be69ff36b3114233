"""The whole run in one dataclass tree: presets, YAML files and dotted ``key=value`` overrides.

    config = load_config(preset="demo", overrides=["optim.base_lr=0.1", "train.steps=50"])
    config = load_config(yaml_path="run.yaml")           # any subset of the tree, the rest defaults

Values in overrides are parsed as YAML (``model.stages=[layer3,layer4]``, ``train.compile=true``).
``config_diff(a, b)`` names the keys that differ; a checkpoint refuses to resume a run whose config
differs in any key outside ``RESUME_FREE_KEYS`` (keys that change neither the math nor the sample
order: logging cadence, where the data lives, when to stop early).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from vito_fast.data.config import DataConfig
from vito_fast.model.config import ModelConfig


@dataclass
class OptimConfig:
    optimizer: str = "lars"                      # "lars" (ResNets: BYOL/DetCon) or "adamw" (ViTs: DINO, MoCo v3)
    base_lr: float = 0.3                         # lr = base_lr × global batch / 256
    weight_decay: float = 1e-6
    weight_decay_end: Optional[float] = None     # cosine from weight_decay to this at the last step; None: constant
    momentum: float = 0.9                        # LARS
    trust_coefficient: float = 1e-3              # LARS η
    betas: Tuple[float, float] = (0.9, 0.999)    # AdamW
    warmup_steps: int = 500
    final_lr_fraction: float = 0.0
    ema_start: float = 0.996
    ema_end: float = 1.0
    grad_clip: float = 0.0                       # max global grad norm; 0 disables


@dataclass
class TrainConfig:
    steps: int = 100_000
    stop_after: int = 0                          # stop early at this step (0: run to `steps`); resumable
    checkpoint_every: int = 1000
    log_every: int = 20
    image_every: int = 500                       # attention-map images in TensorBoard; 0 disables
    compile: bool = False                        # torch.compile the trunks
    amp: bool = True                             # bf16 autocast (CUDA only)
    device: str = "auto"                         # "auto", "cpu", "cuda"
    cpu_threads: int = 0                         # intra-op threads on a CPU (0: half the cores)
    seed: int = 0                                # model initialisation
    progress: bool = True                        # tqdm bar on rank 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Keys that may differ between a checkpoint and the run resuming it (train.steps: extending a run;
# the schedules follow the new total from the resumed step on, and the loop says where they differ).
RESUME_FREE_KEYS = frozenset({
    "data.path", "data.num_threads", "data.decode_workers", "data.sample_timeout", "data.backend",
    "train.steps", "train.stop_after", "train.checkpoint_every", "train.log_every", "train.image_every",
    "train.compile", "train.progress", "train.device", "train.cpu_threads",
})

PRESETS: Dict[str, Dict[str, Any]] = {
    # Small enough for a laptop CPU in minutes: ResNet-18 at half width (a quarter of the compute;
    # measured on the demo's videos, 200 steps: kNN 44% at width 32 vs 37% at full width, from 30%
    # at random init), 64 px, 16 pairs a step, narrow heads.
    "demo": {
        # The entropy floor keeps the attention spread over the object instead of one peak (measured on
        # the built-in videos with clutter, 600 steps: layer-3 attention IoU with the objects 0.07 -> 0.55,
        # kNN on the attention-pooled features 43% -> 54%; average pooling 47%).
        "model": {"arch": "resnet18", "width": 32, "pool_hidden": 128, "proj_hidden": 512, "proj_dim": 128,
                  "pred_hidden": 512, "attention_entropy_floor": 0.5},
        # Views for runs of a hundred steps (measured on the built-in videos, 80 steps: linear probe 48%
        # vs 34% at random init; with the paper's views the loss stays at chance, 5.5, for 100 steps and
        # nothing is learnt): larger crops, no colour/blur/solarize changes.
        "data": {"image_size": 64, "batch_size": 16,
                 "views": {"crop_scale": [0.3, 1.0], "jitter_probability": [0.0, 0.0],
                           "grayscale_probability": [0.0, 0.0], "blur_probability": [0.0, 0.0],
                           "solarize_probability": [0.0, 0.0]}},
        # lr 0.25 at 16 pairs; EMA from 0.99: the target must follow within a few hundred steps
        "optim": {"base_lr": 4.0, "warmup_steps": 10, "weight_decay": 1e-6, "ema_start": 0.99},
        "train": {"steps": 100, "checkpoint_every": 25, "log_every": 5, "image_every": 25},
    },
    # The paper's setting (BYOL/DetCon defaults), per GPU 256 pairs.
    "resnet50": {},
    # ViT-S/16 (timm's vit_small_patch16_224) as self-supervised ViTs are trained, per GPU 256 pairs at 224 px:
    # AdamW, linear warm-up over the first 10% of the steps then cosine decay (DINO, MoCo v3), base lr 1.5e-4 ×
    # batch/256 (MoCo v3, the contrastive recipe with BN heads and an EMA target closest to VITO's), weight
    # decay 0.04 → 0.4 on a cosine (DINO), drop path 0.1 and gradient clipping at 3.0 (DINO), EMA 0.996 → 1
    # (BYOL, DINO). Taps: the last block and the one two thirds in. Not tuned for VITO: no GPU run yet.
    "vit_s16": {
        "model": {"arch": "vit_small_patch16_224", "stages": ["block8", "block12"], "vit": {"drop_path": 0.1}},
        "optim": {"optimizer": "adamw", "base_lr": 1.5e-4, "weight_decay": 0.04, "weight_decay_end": 0.4,
                  "warmup_steps": 10_000, "grad_clip": 3.0},
    },
    # ViT-B/16 (vit_base_patch16_224): the same recipe (DINO and MoCo v3 train ViT-B with ViT-S's settings
    # but for the batch).
    "vit_b16": {
        "model": {"arch": "vit_base_patch16_224", "stages": ["block8", "block12"], "vit": {"drop_path": 0.1}},
        "optim": {"optimizer": "adamw", "base_lr": 1.5e-4, "weight_decay": 0.04, "weight_decay_end": 0.4,
                  "warmup_steps": 10_000, "grad_clip": 3.0},
    },
}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn a YAML value into the field's type (lists → tuples, ints → floats), or raise naming where."""
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config: {where} must be a mapping, got {value!r}")
        return _build(annotation, value, where)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if origin in (tuple, Tuple):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config: {where} must be a list, got {value!r}")
        item_types = args[:1] if len(args) == 2 and args[1] is Ellipsis else args
        if len(item_types) > 1 and len(item_types) != len(value):
            raise ValueError(f"config: {where} needs {len(item_types)} values, got {value!r}")
        return tuple(_coerce(v, item_types[min(i, len(item_types) - 1)], f"{where}[{i}]")
                     for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config: {where} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config: {where} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config: {where} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"config: {where} must be a string, got {value!r}")
        return value
    return value


def _build(cls, values: Dict[str, Any], where: str = ""):
    types = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"config: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                         f"{where or 'the top level'} has {', '.join(sorted(types))}")
    kwargs = {name: _coerce(value, types[name], f"{where}.{name}" if where else name)
              for name, value in values.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> Dict[str, Any]:
    """Nested plain dict (tuples become lists), the form stored in checkpoints and YAML."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return plain(config)


def from_dict(values: Dict[str, Any]) -> Config:
    return _build(Config, values)


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# A tiny ViT for CPUs, the demo's settings otherwise: timm's vit_tiny_patch16_224 family cut to patch 8 (8×8
# tokens at 64 px), 96 wide, 4 blocks of 3 heads (0.5 M weights; a step costs about what the demo's
# half-width ResNet-18's does on a CPU, benches/RESULTS.md), taps at blocks 3 and 4; AdamW as the ViT presets,
# with a learning rate and a constant weight decay for a run of a thousand steps.
PRESETS["vit_demo"] = _merge(PRESETS["demo"], {
    "model": {"arch": "vit_tiny_patch16_224", "width": 64, "stages": ["block3", "block4"],
              "vit": {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}},
    "optim": {"optimizer": "adamw", "base_lr": 0.016, "weight_decay": 0.05, "warmup_steps": 10},
})


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """["a.b=1", "c=x"] → {"a": {"b": 1}, "c": "x"}; values parsed as YAML."""
    tree: Dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"config: override {item!r} is not key=value (e.g. optim.base_lr=0.1)")
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def load_config(preset: Optional[str] = None, yaml_path: Optional[str] = None,
                overrides: Sequence[str] = (), base: Optional[Config] = None) -> Config:
    """base (or defaults) ← preset ← YAML file ← overrides, validated field by field."""
    values = to_dict(base) if base is not None else {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"config: unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values = _merge(values, PRESETS[preset])
    if yaml_path is not None:
        with open(yaml_path) as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config: {yaml_path} must hold a mapping at the top level")
        values = _merge(values, loaded)
    values = _merge(values, parse_overrides(overrides))
    return from_dict(values)


def flatten(config: Any, prefix: str = "") -> Dict[str, Any]:
    """{"model.arch": "resnet18", ...} (tuples as lists) for comparisons and logging."""
    flat: Dict[str, Any] = {}
    for key, value in (to_dict(config) if not isinstance(config, dict) else config).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _with_defaults(config: Any) -> Any:
    """A config dict completed with the defaults of keys it lacks (a checkpoint written before they
    existed, e.g. optim.optimizer), so that only keys set differently count as differences."""
    if not isinstance(config, dict):
        return config
    try:
        return from_dict(config)
    except (ValueError, TypeError):  # keys this version no longer has: compare as written
        return config


def config_diff(a: Any, b: Any, ignore: frozenset = frozenset()) -> List[str]:
    """Dotted keys whose values differ between two configs (Config or dict, missing keys taken at their
    defaults), sorted."""
    flat_a, flat_b = flatten(_with_defaults(a)), flatten(_with_defaults(b))
    keys = sorted(set(flat_a) | set(flat_b))
    return [k for k in keys if k not in ignore and flat_a.get(k) != flat_b.get(k)]


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
