"""Learning rate and EMA momentum as pure functions of the step (nothing stored, nothing stepped).

    lr(step)       = peak · step / warmup                                       for step < warmup
                   = final + (peak − final) · ½(1 + cos(π · (step − warmup) / (total − warmup)))
    momentum(step) = end − (end − start) · ½(1 + cos(π · step / total))          (BYOL: 0.996 → 1)
    wd(step)       = end − (end − start) · ½(1 + cos(π · step / total))          (DINO: 0.04 → 0.4)

Resuming at step s therefore needs only s.
"""
from __future__ import annotations

import math
from typing import Optional


def learning_rate(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int,
                  final_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to peak_lr over warmup_steps, then cosine decay to final_lr at total_steps."""
    if total_steps <= 0:
        raise ValueError(f"learning_rate: total_steps must be > 0, got {total_steps}")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return final_lr + (peak_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_momentum(step: int, *, total_steps: int, start: float = 0.996, end: float = 1.0) -> float:
    """Cosine increase of the target's EMA momentum from start (step 0) to end (step total_steps)."""
    if total_steps <= 0:
        raise ValueError(f"ema_momentum: total_steps must be > 0, got {total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))


def weight_decay(step: int, *, total_steps: int, start: float, end: Optional[float] = None) -> float:
    """Cosine from start (step 0) to end (step total_steps), as DINO raises it for ViTs; end None: start throughout."""
    if end is None:
        return start
    return ema_momentum(step, total_steps=total_steps, start=start, end=end)


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """The linear scaling rule: base_lr × global_batch / 256."""
    return base_lr * global_batch / reference_batch
