"""View sampler: C++ (vito_fast._C) vs the NumPy reference vs a torchvision loop, 4,096 samples.

    python -m pytest benches/bench_sampler.py --benchmark-only -q

Every provider gets the same batch: 4,096 clips of 250 frames at 25 fps, 256x341 frames, the
paper's ViewConfig. C++ and NumPy compute *everything* for both views of each sample (two frame
indices, two crops, flips, colour jitter with order, grayscale, blur, solarize, swap) and include
the input checks of the public API. The torchvision baseline is a Python loop over
``RandomResizedCrop.get_params`` that computes **one crop per sample and nothing else** (4,096
calls), so the ratios understate our advantage. Timings are wall clock on the CPU; the table
printed at the end gives the speed-up of each provider over the torchvision loop.
"""
from __future__ import annotations

import numpy as np
import pytest

from vito_fast import _cpp
from vito_fast.data import ViewConfig, sample_view_params, sample_view_params_numpy

BATCH = 4096
FRAME_HW = (256, 341)
GROUP = f"view parameters for {BATCH} samples"


def batch_inputs():
    return dict(
        sample_ids=np.arange(BATCH, dtype=np.int64), num_frames=np.full(BATCH, 250), fps=np.full(BATCH, 25.0),
        frame_hw=np.tile(FRAME_HW, (BATCH, 1)), seed=0, epoch=0, config=ViewConfig(),
    )


def torchvision_crop_loop(image, scale, ratio, count: int = BATCH):
    from torchvision.transforms import RandomResizedCrop

    return [RandomResizedCrop.get_params(image, scale, ratio) for _ in range(count)]


@pytest.mark.benchmark(group=GROUP)
def test_torchvision_get_params_loop(benchmark, speedups):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    image = torch.empty(3, *FRAME_HW)
    config = ViewConfig()
    crops = benchmark.pedantic(torchvision_crop_loop, args=(image, list(config.crop_scale), list(config.crop_ratio)),
                               rounds=15, warmup_rounds=1)
    assert len(crops) == BATCH
    speedups.record(GROUP, "torchvision get_params loop (1 crop/sample only)", benchmark, baseline=True)


@pytest.mark.benchmark(group=GROUP)
def test_numpy_reference(benchmark, speedups):
    params = benchmark.pedantic(sample_view_params_numpy, kwargs=batch_inputs(), rounds=40, warmup_rounds=2)
    assert len(params) == BATCH
    speedups.record(GROUP, "vito_fast NumPy reference (2 views, all params)", benchmark)


@pytest.mark.skipif(not _cpp.available(), reason="vito_fast._C not built")
@pytest.mark.parametrize("threads", [None, 2], ids=["default", "2-threads"])
def test_cpp(benchmark, speedups, threads):
    """The default picks one thread per 4,096 samples, i.e. one thread here."""
    benchmark.group = GROUP
    params = benchmark.pedantic(sample_view_params, kwargs={**batch_inputs(), "num_threads": threads},
                                rounds=300, warmup_rounds=5)
    assert len(params) == BATCH
    label = "default: 1 thread" if threads is None else f"{threads} threads"
    speedups.record(GROUP, f"vito_fast C++ ({label}; 2 views, all params)", benchmark)
