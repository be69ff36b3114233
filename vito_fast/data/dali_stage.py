"""The DALI side of a PairLoader: build the graph, feed it while it runs, take its outputs.

``DaliStage`` is a part of ``PairLoader`` (a base class holding these methods, not a stage of its
own): it feeds host batches (``HostBatch``) with ``feed_input`` + ``schedule_run`` so DALI always
holds ``prefetch`` iterations, takes their outputs in order, and turns them into torch tensors on
the loader's device. A failure inside the graph is traced to its samples by decoding them on the
host; those are replaced, the pipeline is rebuilt and every batch in flight is fed again.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from vito_fast.data.decode_pool import Arena, WorkerFailure
from vito_fast.data.sampler import ViewParams
from vito_fast.errors import StoreError, VideoError

__all__ = ["DaliStage", "HostBatch"]

DATA_ERRORS = (StoreError, VideoError, OSError, WorkerFailure)


@dataclass
class HostBatch:
    """What the host prepared for one step: the clips, their view parameters and the graph inputs."""

    epoch: int
    step: int
    clips: np.ndarray
    repeats: np.ndarray
    attempts: np.ndarray
    params: ViewParams
    inputs: List[Optional[Dict[str, np.ndarray]]]
    arena: Optional[Arena] = None
    padding: bool = False  # fed only to fill DALI's first prefetch; its output is dropped


class DaliStage:
    """Methods of PairLoader that run on its "vito-dali" thread (see the module docstring)."""

    def _build(self):
        from vito_fast.data.pipeline import build_pair_pipeline

        config = self.config
        device_id = self._device_id  # chosen on the constructing thread (see PairLoader.__init__)
        output_dtype = "float16" if config.dtype == "float16" else "float32"
        self._scheduled = self._fed_unscheduled = 0
        self._needs_prefetch = True
        return build_pair_pipeline(self.source.input_kind, batch_size=self.batch_size, image_size=config.image_size,
                                   device=self.device, output_dtype=output_dtype, num_threads=self._threads,
                                   device_id=device_id, hw_decoder_load=config.hw_decoder_load,
                                   prefetch=config.prefetch)

    def _schedule(self, batch: HostBatch) -> None:
        """Feed one batch and let DALI run it; a new pipeline runs once ``prefetch`` batches are fed."""
        from vito_fast.data.pipeline import feed_pipeline, view_arguments

        if self._pipeline is None:
            self._pipeline = self._build()
        inputs = {name: [sample[name] for sample in batch.inputs] for name in batch.inputs[0]}
        for view in (0, 1):
            inputs.update(view_arguments(batch.params, view, self._max_window))
        feed_pipeline(self._pipeline, inputs)
        if self._needs_prefetch:  # a new pipeline's first run prefetches: it needs `prefetch` batches fed
            self._fed_unscheduled += 1
            if self._fed_unscheduled < self.config.prefetch:
                return
            self._needs_prefetch, self._fed_unscheduled = False, 0
            self._pipeline.schedule_run()
            self._scheduled += self.config.prefetch
            return
        self._pipeline.schedule_run()
        self._scheduled += 1

    def _take_outputs(self, in_flight: deque):
        """DALI's outputs of the oldest batch in flight; on a failure in the graph, the bad samples are
        found on the host and replaced, the pipeline is rebuilt and every batch in flight fed again."""
        while True:
            if self._fed_unscheduled:  # a new pipeline with fewer than `prefetch` batches: pad it
                padding = HostBatch(**{**in_flight[0].__dict__, "padding": True})
                while self._fed_unscheduled:
                    self._schedule(padding)
                    in_flight.append(padding)
            try:
                outputs = self._pipeline.outputs()
                self._scheduled -= 1
                return outputs
            except Exception:
                self._pipeline = None
                bad = {id(batch): self._find_bad(batch) for batch in in_flight if not batch.padding}
                if not any(rows.size for rows in bad.values()):
                    raise
                for batch in in_flight:
                    if not batch.padding and bad[id(batch)].size:
                        self._fill(batch, bad[id(batch)])
                real = [batch for batch in in_flight if not batch.padding]
                in_flight.clear()
                for batch in real:
                    self._schedule(batch)
                    in_flight.append(batch)

    def _find_bad(self, batch: HostBatch) -> np.ndarray:
        def check(row):
            try:
                self.source.verify(int(batch.clips[row]), batch.params.frame_indices[row])
                return None
            except DATA_ERRORS as error:
                self._mark_bad(int(batch.clips[row]), error)
                return row

        rows = self._host_threads.map(check, range(self.batch_size))
        return np.array([row for row in rows if row is not None], dtype=np.int64)

    def _to_torch(self, output):
        import torch

        size = self.config.image_size
        dali_dtype = torch.float16 if self.config.dtype == "float16" else torch.float32
        if self.device == "cpu":
            views = torch.from_numpy(np.array(output.as_tensor())).permute(0, 3, 1, 2)
            return views.to(torch.bfloat16) if self.config.dtype == "bfloat16" else views
        from nvidia.dali.plugin.pytorch import feed_ndarray

        device = torch.device("cuda", self._device_id)
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        with torch.cuda.stream(self._stream):  # allocated and written on the loader's own stream
            hwc = torch.empty((self.batch_size, size, size, 3), dtype=dali_dtype, device=device)
            feed_ndarray(output.as_tensor(), hwc, cuda_stream=self._stream)
            views = hwc.permute(0, 3, 1, 2)  # NHWC storage seen as NCHW: channels_last without a copy
            return views.to(torch.bfloat16) if self.config.dtype == "bfloat16" else views

    def _deliver(self, batch: HostBatch, outputs):
        """(batch dict, samples replaced, CUDA event or None) from DALI's outputs of a host batch."""
        view1, view2 = outputs
        out = {"view1": self._to_torch(view1), "view2": self._to_torch(view2),
               "sample_ids": batch.clips.copy(), "frame_indices": batch.params.frame_indices.copy(),
               "crops": batch.params.crop_boxes.copy(), "labels": self.source.labels[batch.clips]}
        ready = None
        if self.device == "gpu":
            ready = self._copied = self._stream.record_event()  # DALI's buffers are read until then
        return out, int((batch.attempts > 0).sum()), ready

    def _drain(self, in_flight: deque) -> None:
        """Take the outputs of iterations still scheduled (an iteration stopped early), so the next
        iteration's first outputs are its own; a pipeline in doubt is dropped instead."""
        try:
            if self._pipeline is not None and self._fed_unscheduled:
                self._pipeline = None  # fed but never run: cheaper to build anew than to pad and run
            while self._pipeline is not None and self._scheduled:
                self._pipeline.outputs()
                self._scheduled -= 1
        except Exception:
            self._pipeline = None
        for batch in in_flight:
            self._give_back_arena(batch)

    def _hand_over(self, batch: Dict[str, object], ready) -> None:
        """Make the views safe to use on the consumer's current CUDA stream."""
        import torch

        current = torch.cuda.current_stream(torch.device("cuda", self._device_id))
        current.wait_event(ready)
        for name in ("view1", "view2"):
            batch[name].record_stream(current)
