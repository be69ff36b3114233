"""The pretraining loop. ``train(config, run_dir)`` reads top to bottom like the step it runs.

Setup: process group and device → model (seeded, channels_last on GPU, global BN when distributed) →
optimiser (LARS, or AdamW for the ViT presets) → checkpoint restore (``resume=True``) → optional
``torch.compile`` of the trunks → DDP → loader positioned at the restored step. Then, per step:

    1. schedules   lr, weight decay and EMA momentum, pure functions of the step
    2. data        the next pair batch; the time spent waiting for it is the data-wait share
    3. forward     both views through online and target; per-stage InfoNCE (bf16 autocast on GPU)
    4. backward    gradients (averaged over ranks by DDP), optional clipping, optimiser step
    5. EMA         target ← lerp(target, online, 1 − momentum), one fused foreach op
    6. bookkeeping every ``log_every`` steps and before each checkpoint: losses averaged over ranks,
                   checked finite (else NonFiniteLossError, keeping the last good checkpoint), logged;
                   attention maps every ``image_every``; a checkpoint every ``checkpoint_every`` and at
                   the end (rank 0 writes, atomically).

Losses are read back from the device only at bookkeeping points, so the host runs ahead of the GPU
between them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn.parallel import DistributedDataParallel

from vito_fast.model.sync_bn import convert_sync_batchnorm
from vito_fast.model.vito import VITO
from vito_fast.train import distributed
from vito_fast.train.checkpoint import checkpoint_path, load_checkpoint, restore, save_checkpoint
from vito_fast.train.config import Config
from vito_fast.train.data import build_loader
from vito_fast.train.logger import Logger
from vito_fast.train.optimizers import build_optimizer, set_step_values
from vito_fast.train.run_folder import RunFolder
from vito_fast.train.schedules import ema_momentum, learning_rate, scaled_lr, weight_decay


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without checkpointing the bad state."""


@dataclass
class TrainResult:
    step: int                                   # the step the run stopped at (steps done in total)
    losses: List[float] = field(default_factory=list)          # per step run in this call, mean over ranks
    stage_losses: List[Dict[str, float]] = field(default_factory=list)
    checkpoint: Optional[Path] = None
    seconds: float = 0.0                        # wall time of the steps run in this call
    pairs: int = 0                              # frame pairs trained on in this call (all ranks)

    def summary(self) -> str:
        """One line: loss first -> last, pairs/s and wall time of this call's steps."""
        if not self.losses:
            return "pretrain: no step run"
        rate = self.pairs / self.seconds if self.seconds > 0 else float("nan")
        return (f"pretrain: loss {self.losses[0]:.3f} -> {self.losses[-1]:.3f} over {len(self.losses)} steps, "
                f"{rate:.1f} pairs/s, {self.seconds:.0f} s")


def train(config: Config, run_dir, *, resume: bool = False, allow_config_change: Sequence[str] = ()) -> TrainResult:
    """Pretrain per config, writing RUN/checkpoint.pt, RUN/metrics.jsonl, RUN/tensorboard (rank 0).

    resume=True continues from RUN/checkpoint.pt, refusing a checkpoint of a different config except
    for the keys that may change on resume (``RESUME_FREE_KEYS``: a new ``train.steps`` extends the
    run) and ``allow_config_change``. Under torchrun (or inside an initialised process group) every
    rank calls this.
    """
    info = distributed.setup(config.train.device)
    threads = torch.get_num_threads()
    if info.device.type == "cpu":
        torch.set_num_threads(config.train.cpu_threads or cpu_compute_threads())
    try:
        return _train(config, Path(run_dir), resume, info, tuple(allow_config_change))
    finally:
        torch.set_num_threads(threads)
        distributed.cleanup(info)  # only a process group that setup() created


def cpu_compute_threads() -> int:
    """Half the usable cores (at least one) for the step; the rest feed the loader's decoders.

    On the shared 2-core machine of benches/RESULTS.md, two intra-op threads ran the demo step 6×
    slower than one (2.4 vs 15.7 pairs/s): each parallel region waits for a thread without a core.
    """
    from vito_fast.data.config import usable_cores

    return max(1, usable_cores() // 2)


def _train(config: Config, run_dir: Path, resume: bool, info: distributed.DistInfo,
           allow_config_change: Tuple[str, ...] = ()) -> TrainResult:
    tc, oc = config.train, config.optim
    device = info.device
    use_amp = tc.amp and device.type == "cuda"
    # Model: identical initialisation on every rank; BN statistics over all ranks. channels_last on
    # GPUs (cuDNN's NHWC kernels); contiguous on CPUs, where oneDNN's channels_last backward measured 2× slower.
    torch.manual_seed(tc.seed)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = VITO.from_config(config.model).to(device, memory_format=memory_format)
    if config.model.sync_bn and info.distributed:
        model = convert_sync_batchnorm(model, device.type)
    # Optimiser: LARS or AdamW over the online encoder and predictors (the target has no gradients).
    optimizer = build_optimizer(model, oc, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling

    # Resume: weights, target, optimiser, RNGs and the step; the data position follows from the step.
    step = 0
    if resume:
        state = load_checkpoint(run_dir, config, map_location=device, allow=allow_config_change)
        step = restore(state, model=model, optimizer=optimizer, scaler=scaler)
        if info.is_main and int(state["config"]["train"]["steps"]) != tc.steps:
            print(schedule_change(config, int(state["config"]["train"]["steps"]), step, info.world_size), flush=True)
    last_checkpoint = checkpoint_path(run_dir) if resume else None
    if info.is_main:
        RunFolder(run_dir).write_config(config)

    if tc.compile:
        model.online.trunk.compile()
        model.target.trunk.compile()
    network = model
    if info.distributed:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          forward_sync_buffers=not config.model.sync_bn)

    # Data: this rank's shard, positioned at the restored step.
    loader = build_loader(config, info, epoch=0, start_step=0, run_dir=run_dir)
    if info.is_main and hasattr(loader, "describe"):  # a run says what fed it (synthetic pairs need no words)
        RunFolder(run_dir).write_data(loader.describe())
    steps_per_epoch = len(loader)
    if resume and state["loader"].get("steps_per_epoch", steps_per_epoch) != steps_per_epoch:
        raise ValueError(f"pretrain: the data gives {steps_per_epoch} steps per epoch but the checkpoint's "
                         f"gave {state['loader']['steps_per_epoch']}; the sample order would not continue")
    epoch = step // steps_per_epoch
    loader.load_state_dict({"epoch": epoch, "step": step % steps_per_epoch})
    batches = iter(loader)

    global_batch = config.data.batch_size * info.world_size
    peak_lr = scaled_lr(oc.base_lr, global_batch)
    stop = min(tc.stop_after or tc.steps, tc.steps)
    logger = Logger(run_dir, enabled=info.is_main, total_steps=tc.steps, start_step=step, progress=tc.progress)
    result = TrainResult(step=step, checkpoint=last_checkpoint)
    pending: List[tuple] = []                   # (step, loss, stage losses, lr, momentum) not yet read back
    window_start, window_wait, window_steps = time.perf_counter(), 0.0, 0
    loop_started, first_step = window_start, step
    network.train()

    while step < stop:
        # 1. Schedules: pure functions of the step.
        lr = learning_rate(step, peak_lr=peak_lr, warmup_steps=oc.warmup_steps, total_steps=tc.steps,
                           final_lr=peak_lr * oc.final_lr_fraction)
        momentum = ema_momentum(step, total_steps=tc.steps, start=oc.ema_start, end=oc.ema_end)
        set_step_values(optimizer, lr, weight_decay(step, total_steps=tc.steps, start=oc.weight_decay,
                                                    end=oc.weight_decay_end))

        # 2. Data: the next batch, rolling over to the next epoch (same order as an uninterrupted run).
        waited = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            epoch += 1
            loader.set_epoch(epoch)
            batches = iter(loader)
            batch = next(batches)
        window_wait += time.perf_counter() - waited

        # 3. Forward: online and target branches, InfoNCE per stage against the global batch's keys.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss, stage_losses = network(batch["view1"], batch["view2"])

        # 4. Backward (DDP averages gradients over ranks), optional clipping, optimiser step.
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if oc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], oc.grad_clip)
        optimizer.step()

        # 5. EMA: the target follows the online network.
        model.update_target(momentum)

        pending.append((step, loss.detach(), [stage_losses[s].detach() for s in model.stages], lr, momentum))
        step += 1
        window_steps += 1

        # 6. Bookkeeping: read losses back, check them, log, render attention, checkpoint.
        checkpoint_due = step % tc.checkpoint_every == 0 or step == stop
        if step % tc.log_every == 0 or checkpoint_due:
            _flush(pending, model.stages, info, result, logger, last_checkpoint)
            elapsed = time.perf_counter() - window_start
            logger.window(step, result.losses[-1], global_batch * window_steps / elapsed,
                          window_wait / elapsed, window_steps)
            window_start, window_wait, window_steps = time.perf_counter(), 0.0, 0
        if tc.image_every and step % tc.image_every == 0:
            logger.attention(step, batch["view1"], model.attention_maps())
        if checkpoint_due:
            if info.is_main:
                save_checkpoint(run_dir, step=step, model=model, optimizer=optimizer, scaler=scaler, config=config,
                                loader_state={"epoch": step // steps_per_epoch, "step": step % steps_per_epoch,
                                              "steps_per_epoch": steps_per_epoch})
            distributed.barrier(info)  # every rank knows the checkpoint exists once it passes here
            last_checkpoint = result.checkpoint = checkpoint_path(run_dir)

    result.step = step
    result.seconds, result.pairs = time.perf_counter() - loop_started, (step - first_step) * global_batch
    if hasattr(loader, "close"):
        loader.close()  # the decode workers stop with the run, not when the loader is collected
    final = (f"pretrain: stopped at step {step}/{tc.steps}; checkpoint {result.checkpoint}"
             if step < tc.steps else f"pretrain: done, {step} steps; checkpoint {result.checkpoint}")
    logger.close(final + "\n" + result.summary() + _data_problems(getattr(loader, "stats", None)))
    return result


def schedule_change(config: Config, old_total: int, step: int, world_size: int = 1) -> str:
    """The line a resume with a new ``train.steps`` prints: from which step this run's learning-rate
    and EMA-momentum curves differ from an uninterrupted run of the new length."""
    oc, new_total = config.optim, config.train.steps
    peak = scaled_lr(oc.base_lr, config.data.batch_size * world_size)

    def first_difference(curve) -> Optional[int]:
        return next((s for s in range(step) if not math.isclose(curve(s, old_total), curve(s, new_total),
                                                                 rel_tol=1e-12, abs_tol=1e-15)), None)

    lr = first_difference(lambda s, total: learning_rate(s, peak_lr=peak, warmup_steps=oc.warmup_steps,
                                                         total_steps=total, final_lr=peak * oc.final_lr_fraction))
    momentum = first_difference(lambda s, total: ema_momentum(s, total_steps=total, start=oc.ema_start,
                                                              end=oc.ema_end))
    where = ("; the steps run so far match an uninterrupted run of that length" if lr is None and momentum is None
             else f"; the learning rate differs from an uninterrupted {new_total}-step run from step "
                  f"{lr if lr is not None else step} on, the EMA momentum from step "
                  f"{momentum if momentum is not None else step} on")
    return (f"pretrain: train.steps {old_total} -> {new_total} at step {step}: the schedules follow "
            f"{new_total} steps from here{where}")


def _data_problems(stats) -> str:
    """A line naming the files this rank's loader could not use (empty when there were none)."""
    if stats is None or not stats.failed_files:
        return ""
    names = list(stats.failed_files)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"\npretrain: {len(names)} file(s) could not be used ({shown}); {stats.replaced} samples were "
            f"replaced, {stats.timeouts} timed out")


def _flush(pending: List[tuple], stages, info, result: TrainResult, logger: Logger,
           last_checkpoint: Optional[Path]) -> None:
    """Average the pending steps' losses over ranks (one collective), stop on a non-finite one, log them."""
    if not pending:
        return
    values = torch.stack([torch.stack([loss, *parts]) for _, loss, parts, _, _ in pending]).float()
    values = distributed.mean_over_ranks(values, info).cpu()
    finite = torch.isfinite(values).all(dim=1)
    if not bool(finite.all()):
        bad = pending[int((~finite).nonzero()[0])][0]
        kept = (f"the last good checkpoint {last_checkpoint} is kept" if last_checkpoint is not None
                else "no checkpoint had been written yet")
        logger.close()
        raise NonFiniteLossError(
            f"pretrain: the loss became non-finite ({values[int((~finite).nonzero()[0]), 0].item()}) at step "
            f"{bad}; stopping without saving that state: {kept}. Lower optim.base_lr, set optim.grad_clip "
            f"(e.g. 1.0) or a longer optim.warmup_steps, then --resume.")
    records = []
    for (step, _, _, lr, momentum), row in zip(pending, values.tolist()):
        record = {"step": step, "loss": row[0], **dict(zip(stages, row[1:])), "lr": lr, "momentum": momentum}
        records.append(record)
        result.losses.append(row[0])
        result.stage_losses.append(dict(zip(stages, row[1:])))
    logger.steps(records)
    pending.clear()
