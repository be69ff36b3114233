"""Rank-0 logging: a tqdm bar, TensorBoard scalars and attention-map images, and RUN/metrics.jsonl.

Other ranks get a ``Logger`` whose methods do nothing, so the loop calls it unconditionally.
``metrics.jsonl`` holds one line per step ({"step", "loss", "<stage>", "lr", "momentum"}) and
one per log window ({"step", "pairs_per_s", "data_wait"}); a resumed run appends to it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from vito_fast.train.run_folder import RunFolder

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def attention_overlay(images: torch.Tensor, attention: torch.Tensor, count: int = 8) -> torch.Tensor:
    """(N, 3, S, S) normalised views and (N, h, w) attention → (n, 3, S, S) in [0, 1]: the frame dimmed,
    the attention (rescaled per image to [0, 1]) shown in red."""
    images = images[:count].detach().float().cpu()
    frames = (images * IMAGENET_STD + IMAGENET_MEAN).clamp(0, 1)
    attn = attention[:count].detach().float().cpu().unsqueeze(1)
    attn = F.interpolate(attn, size=frames.shape[-2:], mode="nearest")
    low = attn.amin(dim=(2, 3), keepdim=True)
    high = attn.amax(dim=(2, 3), keepdim=True)
    attn = (attn - low) / (high - low).clamp_min(1e-12)
    heat = torch.cat([attn, torch.zeros_like(attn), torch.zeros_like(attn)], dim=1)
    return (0.5 * frames + 0.5 * heat).clamp(0, 1)


class Logger:
    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, start_step: int, progress: bool):
        self.enabled = enabled
        self.bar = self.writer = self.metrics = None
        if not enabled:
            return
        run = RunFolder(Path(run_dir))
        run.path.mkdir(parents=True, exist_ok=True)
        self.metrics = open(run.metrics_file, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run.tensorboard_dir), purge_step=start_step or None)
        except ImportError:  # tensorboard is optional at run time
            self.writer = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def steps(self, records: List[Dict[str, float]]) -> None:
        """One record per finished step: step, loss, per-stage losses, lr, momentum."""
        if not self.enabled:
            return
        for record in records:
            self.metrics.write(json.dumps(record) + "\n")
            if self.writer is not None:
                step = record["step"]
                for key, value in record.items():
                    if key != "step":
                        tag = {"lr": "lr", "momentum": "momentum", "loss": "loss/total"}.get(key, f"loss/{key}")
                        self.writer.add_scalar(tag, value, step)
        self.metrics.flush()

    def window(self, step: int, loss: float, pairs_per_s: float, data_wait: float, advanced: int) -> None:
        """Throughput of the last log window; updates the bar."""
        if not self.enabled:
            return
        self.metrics.write(json.dumps({"step": step, "pairs_per_s": pairs_per_s, "data_wait": data_wait}) + "\n")
        if self.writer is not None:
            self.writer.add_scalar("perf/pairs_per_s", pairs_per_s, step)
            self.writer.add_scalar("perf/data_wait_percent", 100 * data_wait, step)
        if self.bar is not None:
            self.bar.update(advanced)
            self.bar.set_postfix(step=step, loss=f"{loss:.4f}", pairs_s=f"{pairs_per_s:.1f}",
                                 wait=f"{100 * data_wait:.0f}%")

    def attention(self, step: int, view1: torch.Tensor, maps: Dict[str, torch.Tensor]) -> None:
        """Attention maps of view 1 per stage, over the (denormalised) frames."""
        if not self.enabled or self.writer is None:
            return
        for stage, attention in maps.items():
            self.writer.add_images(f"attention/{stage}", attention_overlay(view1, attention[: view1.shape[0]]), step)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self, final: Optional[str] = None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if final:
            print(final, flush=True)
        if self.writer is not None:
            self.writer.close()
        self.metrics.close()
