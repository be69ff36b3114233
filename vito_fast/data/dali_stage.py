"""The DALI device stage of a PairLoader: build the graph, feed it while it runs, take its outputs.

``DaliStage`` implements ``DeviceStage`` (device_stage.py) with the graph of pipeline.py. It feeds
host batches with ``feed_input`` + ``schedule_run`` so DALI holds ``prefetch`` iterations, takes
their outputs in order and turns them into torch tensors on the loader's device. A failure inside
the graph is traced to its samples by the host preparation (``find_bad``: decoding them on the
host); those are replaced (``replace``), the pipeline is rebuilt and every batch in flight is fed
again. All of its state (the pipeline, what is scheduled, the batches in flight, the CUDA stream of
the output copies) lives here.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

import numpy as np

from vito_fast.data.augment import view_blur_window
from vito_fast.data.config import LoaderConfig
from vito_fast.data.device_stage import DeviceOutput, HostRepair, hand_over_on_current_stream
from vito_fast.data.host import HostBatch
from vito_fast.errors import DecoderFailure, first_line

__all__ = ["DaliStage"]


class DaliStage:
    """The DALI graph of one source kind on ``device`` ("cpu" or "gpu", CUDA device ``device_id``)."""

    def __init__(self, input_kind: str, batch_size: int, config: LoaderConfig, *, device: str,
                 device_id: Optional[int], host: HostRepair):
        self.input_kind, self.batch_size, self.config = input_kind, batch_size, config
        self.device, self.device_id = device, device_id
        self.depth = config.prefetch
        self._host = host
        self._threads = config.threads()
        self._max_window = view_blur_window(config.image_size, config.blur_kernel_at_224)
        self._pipeline = None
        self._in_flight: deque = deque()  # batches fed and not taken, in order (padding included)
        self._scheduled = 0  # iterations scheduled on the pipeline and not taken
        self._fed_unscheduled = 0  # batches fed to a new pipeline before its first (prefetching) run
        self._needs_prefetch = True
        self._stream = None  # CUDA stream of the output copies (device="gpu")
        self._copied = None  # CUDA event: the last output copy finished reading DALI's buffers

    def held(self) -> int:
        return len(self._in_flight)

    def filling(self) -> bool:
        return self._needs_prefetch

    def submit(self, batch: HostBatch) -> None:
        self._schedule(batch)
        self._in_flight.append(batch)

    def take(self) -> Optional[DeviceOutput]:
        if self._copied is not None:
            self._copied.synchronize()  # outputs() hands DALI back the buffers we copied from
        view1, view2 = self._take_outputs()
        batch = self._in_flight.popleft()
        output = None
        if not batch.padding:
            output = DeviceOutput(batch, (self._to_torch(view1), self._to_torch(view2)))
            if self.device == "gpu":
                output.ready = self._copied = self._stream.record_event()  # DALI's buffers are read until then
        self._host.release(batch)
        return output

    def drain(self) -> None:
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
        for batch in self._in_flight:
            self._host.release(batch)
        self._in_flight.clear()

    def hand_over(self, output: DeviceOutput) -> None:
        hand_over_on_current_stream(output, f"cuda:{self.device_id}")

    def close(self) -> None:
        """Drop the pipeline (DALI frees its buffers with it)."""
        self._pipeline = None

    # ------------------------------------------------------------------ DALI

    def _build(self):
        from vito_fast.data.pipeline import build_pair_pipeline

        config = self.config
        output_dtype = "float16" if config.dtype == "float16" else "float32"
        self._scheduled = self._fed_unscheduled = 0
        self._needs_prefetch = True
        return build_pair_pipeline(self.input_kind, batch_size=self.batch_size, image_size=config.image_size,
                                   device=self.device, output_dtype=output_dtype, num_threads=self._threads,
                                   device_id=self.device_id, hw_decoder_load=config.hw_decoder_load,
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

    def _take_outputs(self):
        """DALI's outputs of the oldest batch in flight; on a failure in the graph, the bad samples are
        found on the host and replaced, the pipeline is rebuilt and every batch in flight fed again."""
        in_flight = self._in_flight
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
            except Exception as error:
                self._pipeline = None
                bad = {id(batch): self._host.find_bad(batch) for batch in in_flight if not batch.padding}
                if not any(rows.size for rows in bad.values()):
                    if self.input_kind == "video":  # PyAV decodes every sample: DALI's video decoder is at fault
                        raise DecoderFailure(f"DALI's video decoder failed on frames PyAV decodes: "
                                             f"{first_line(error)}") from error
                    raise
                for batch in in_flight:
                    if not batch.padding and bad[id(batch)].size:
                        self._host.replace(batch, bad[id(batch)])
                real = [batch for batch in in_flight if not batch.padding]
                in_flight.clear()
                for batch in real:
                    self._schedule(batch)
                    in_flight.append(batch)

    def _to_torch(self, output):
        import torch

        size = self.config.image_size
        dali_dtype = torch.float16 if self.config.dtype == "float16" else torch.float32
        if self.device == "cpu":
            views = torch.from_numpy(np.array(output.as_tensor())).permute(0, 3, 1, 2)
            return views.to(torch.bfloat16) if self.config.dtype == "bfloat16" else views
        from nvidia.dali.plugin.pytorch import feed_ndarray

        device = torch.device("cuda", self.device_id)
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        with torch.cuda.stream(self._stream):  # allocated and written on the stage's own stream
            hwc = torch.empty((self.batch_size, size, size, 3), dtype=dali_dtype, device=device)
            feed_ndarray(output.as_tensor(), hwc, cuda_stream=self._stream)
            views = hwc.permute(0, 3, 1, 2)  # NHWC storage seen as NCHW: channels_last without a copy
            return views.to(torch.bfloat16) if self.config.dtype == "bfloat16" else views
