"""Checkpoints: everything a run needs to continue exactly, written atomically, loaded with weights_only.

One file per run, ``RUN/checkpoint.pt``, replaced at each save: written to a temporary file in the
same directory, flushed to disk, then renamed over the old one, so a run killed at any instant
(SIGKILL included) leaves the last complete checkpoint. It holds

    step, model (online + predictors), target, optimizer, scaler, loader (epoch, step in epoch),
    rng (torch CPU/CUDA, NumPy, Python), config (nested dict), format

RNG states are rank 0's; every rank restores them (the data order is a pure function of the step).
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from vito_fast.train.config import RESUME_FREE_KEYS, config_diff, flatten, to_dict
from vito_fast.train.run_folder import PathLike, RunFolder

FORMAT = 1


class ConfigMismatchError(ValueError):
    """The run's config differs from the checkpoint's in keys that change the math or the data."""


def checkpoint_path(run_dir: PathLike) -> Path:
    return RunFolder.of(run_dir).checkpoint


def capture_rng() -> Dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    python_version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"bit_generator": numpy_state["bit_generator"],
                  "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]),
                  "has_gauss": int(numpy_state["has_gauss"]), "gauss": float(numpy_state["gauss"])},
        "python": [python_version, list(python_state), python_gauss],
    }


def restore_rng(state: Dict[str, Any]) -> None:
    # RNG states must be CPU byte tensors, whatever map_location the checkpoint was loaded with.
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    numpy_state = state["numpy"]
    np.random.set_state({"bit_generator": numpy_state["bit_generator"],
                         "state": {"key": numpy_state["key"].cpu().numpy().astype(np.uint32),
                                   "pos": numpy_state["pos"]},
                         "has_gauss": numpy_state["has_gauss"], "gauss": numpy_state["gauss"]})
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))


def save_checkpoint(run_dir: PathLike, *, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: Optional[torch.amp.GradScaler], loader_state: Dict[str, int], config) -> Path:
    """Write RUN/checkpoint.pt atomically (temp file + fsync + rename); returns its path."""
    return _write(checkpoint_path(run_dir), {
        **_model_state(step, model, config),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "loader": dict(loader_state),
        "rng": capture_rng(),
    })


def save_model_checkpoint(run_dir: PathLike, *, model: torch.nn.Module, config, step: int = 0) -> Path:
    """A checkpoint of the model alone (no optimizer, loader or RNG state): what evaluation and
    export read, for a run that is not to be resumed (the demo's untrained baseline)."""
    return _write(checkpoint_path(run_dir), _model_state(step, model, config))


def _model_state(step: int, model: torch.nn.Module, config) -> Dict[str, Any]:
    return {"format": FORMAT, "step": step,
            "model": {k: v for k, v in model.state_dict().items() if not k.startswith("target.")},
            "target": model.target.state_dict(), "config": to_dict(config)}


def _write(path: Path, state: Dict[str, Any]) -> Path:
    """torch.save to a temporary file beside ``path``, fsync, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def load_checkpoint(run_dir: PathLike, config=None, map_location: Union[str, torch.device] = "cpu",
                    allow: Sequence[str] = ()) -> Dict[str, Any]:
    """Read RUN/checkpoint.pt with weights_only=True; with config, refuse one whose config differs.

    Keys in ``RESUME_FREE_KEYS`` (logging cadence, data path, early stop, ``train.steps`` to extend
    or shorten a run) and in ``allow`` may differ; any other difference raises ConfigMismatchError
    naming every differing key with both values and how to allow it.
    """
    path = checkpoint_path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    state = RunFolder.of(run_dir).read(map_location)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, this version reads {FORMAT}")
    if config is not None:
        known = set(flatten(config))
        unknown = [key for key in allow if key not in known]
        if unknown:
            raise ValueError(f"--allow-config-change: no config key {', '.join(unknown)}")
        differing = config_diff(state["config"], config, ignore=RESUME_FREE_KEYS | frozenset(allow))
        if differing:
            saved, wanted = flatten(state["config"]), flatten(config)
            details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {wanted.get(k)!r}" for k in differing)
            raise ConfigMismatchError(f"{path}: the checkpoint was written with a different config "
                                      f"({len(differing)} key(s) differ: {details}). Resume with the "
                                      f"checkpoint's config, start a new run directory, or accept the change "
                                      f"with --allow-config-change {' '.join(differing)}.")
    return state


def restore(state: Dict[str, Any], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: Optional[torch.amp.GradScaler]) -> int:
    """Load a checkpoint's states into model, optimizer, scaler and the RNGs; returns its step."""
    model.load_state_dict({**state["model"], **{f"target.{k}": v for k, v in state["target"].items()}})
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"])
    return int(state["step"])
