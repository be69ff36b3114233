"""A pretraining run's folder, and the one owner of its layout: every reader and writer of a run
(training, resume, export, evaluation, viz, the demo) goes through ``RunFolder``.

    RUN/checkpoint.pt    all that resuming and evaluating need (written atomically: train/checkpoint.py)
    RUN/config.yaml      the run's config for people (the checkpoint holds the copy that is read back)
    RUN/metrics.jsonl    one JSON line per logged step (train/logger.py)
    RUN/data.md          what fed it: the data backend, the video decoder and why (PairLoader.describe)
    RUN/tensorboard/     TensorBoard scalars and attention images

A source that names a ``.pt`` file rather than a folder stands for that checkpoint (``RunFolder.of``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Union

PathLike = Union[str, os.PathLike]
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class RunFolder:
    path: Path
    checkpoint_name: str = CHECKPOINT

    @classmethod
    def of(cls, source: PathLike) -> "RunFolder":
        """The run of a folder, or of a checkpoint file given by its path (``RUN/checkpoint.pt``)."""
        path = Path(source)
        return cls(path.parent, path.name) if path.suffix == ".pt" else cls(path)

    @property
    def checkpoint(self) -> Path:
        return self.path / self.checkpoint_name

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def data_file(self) -> Path:
        return self.path / "data.md"

    def write_data(self, description: str) -> None:
        """What fed the run (``PairLoader.describe``): the data backend, the video decoder and its choice."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.data_file.write_text(description)

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def require_checkpoint(self) -> Path:
        """The checkpoint's path; FileNotFoundError naming the run when there is none."""
        if not self.has_checkpoint():
            raise FileNotFoundError(f"{self.path}: needs a run directory from `vito-fast pretrain` (with "
                                    f"{self.checkpoint_name})")
        return self.checkpoint

    def read(self, map_location: Any = "cpu") -> Dict[str, Any]:
        """The checkpoint as saved (``weights_only=True``: tensors and plain containers only)."""
        import torch

        return torch.load(self.require_checkpoint(), map_location=map_location, weights_only=True)

    def saved_config(self) -> Dict[str, Any]:
        """The config the checkpoint was written with, as a nested dict."""
        return self.read()["config"]

    def write_config(self, config) -> None:
        from vito_fast.train.config import dump_yaml

        self.path.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(dump_yaml(config))

    def read_metrics(self) -> List[Dict[str, Any]]:
        """The logged records, in order (an empty list before the first log)."""
        if not self.metrics_file.is_file():
            return []
        with open(self.metrics_file) as handle:
            return [json.loads(line) for line in handle if line.strip()]


def encoder_weights(state: Dict[str, Any], encoder: str = "online") -> Dict[str, Any]:
    """The online encoder's (trunk.*, pools.*, projectors.*) or the EMA target's weights of a checkpoint."""
    if encoder == "target":
        return dict(state["target"])
    return {key[len("online."):]: value for key, value in state["model"].items() if key.startswith("online.")}
