"""The torch backend's view graph (``vito_fast.data.torch_augment``) against the float64 reference
(``augment.reference_resize`` + ``augment.reference_view``) and against DALI's graph.

Frames are fresh random textures of odd, unequal sizes (so the padding path runs), parameters come
from the real sampler. Each test runs on the CPU and, cuda-marked, on the GPU (where TF32 matmuls,
if a trainer allows them, may round a few more pixels to the next level).
Needs neither DALI nor PyAV except the DALI comparisons, which skip without DALI.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vito_fast.data import ViewConfig, sample_view_params
from vito_fast.data.augment import (IMAGENET_MEAN, IMAGENET_STD, colour_matrices, reference_resize, reference_view,
                                    resize_weights, view_blur_window)
from vito_fast.data.torch_augment import augment_views, pad_frames, resize_matrices, resize_taps, view_tensors

NO_AUGMENTATION = dict(flip_probability=(0.0, 0.0), jitter_probability=(0.0, 0.0), grayscale_probability=(0.0, 0.0),
                       blur_probability=(0.0, 0.0), solarize_probability=(0.0, 0.0))
ONE_AUGMENTATION = {  # each augmentation alone (crop + resize always), then all of the paper's
    "crop": {},
    "flip": dict(flip_probability=(1.0, 0.5)),
    "jitter": dict(jitter_probability=(1.0, 1.0)),
    "grayscale": dict(grayscale_probability=(1.0, 0.5)),
    "blur": dict(blur_probability=(1.0, 0.5), blur_sigma=(0.3, 2.0)),
    "solarize": dict(solarize_probability=(1.0, 0.5)),
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def view_config(name: str) -> ViewConfig:
    return ViewConfig() if name == "all" else ViewConfig(**{**NO_AUGMENTATION, **ONE_AUGMENTATION[name]})


def textures(rng: np.random.Generator, sizes) -> list:
    """(H, W, 3) uint8 frames: smooth waves (what resampling must keep) plus noise (what it must filter)."""
    frames = []
    for height, width in sizes:
        y, x = np.mgrid[0:height, 0:width].astype(np.float64)
        waves = sum(np.sin(rng.uniform(0.02, 0.5) * x + rng.uniform(0.02, 0.5) * y + rng.uniform(0, 6))[..., None]
                    * rng.uniform(10, 50, size=3) for _ in range(4))
        frames.append(np.clip(128 + waves + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8))
    return frames


def sampled(rng: np.random.Generator, count: int, size: int, views: ViewConfig, sizes=None):
    """Frames, their (count, 2) sizes, and the sampler's ViewParams for them."""
    sizes = sizes or [(int(rng.integers(37, 121)), int(rng.integers(41, 151))) for _ in range(count)]
    frames = textures(rng, sizes)
    frame_hw = np.array(sizes, dtype=np.int64)
    params = sample_view_params(rng.integers(0, 1 << 40, size=count), np.full(count, 50), np.full(count, 25.0),
                                frame_hw, seed=int(rng.integers(1 << 31)), epoch=0, config=views)
    return frames, frame_hw, params


def torch_views(frames, frame_hw, params, view: int, size: int, device: str, dtype=torch.float32) -> np.ndarray:
    """(N, S, S, 3) float64 on the 0..255 scale: the torch graph's view ``view`` of ``frames``."""
    device = torch.device(device)
    padded = pad_frames([torch.from_numpy(frame).permute(2, 0, 1).to(device) for frame in frames])
    tensors = view_tensors(params, view, size, view_blur_window(size), device)
    out = augment_views(padded, torch.from_numpy(frame_hw).to(device), tensors, size, dtype)
    assert out.shape == (len(frames), 3, size, size) and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    hwc = out.float().cpu().permute(0, 2, 3, 1).double().numpy()
    return (hwc * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0


def level_bound(params, view: int, levels: float) -> np.ndarray:
    """(N, 1, 1, 1) largest error a change of ``levels`` in a resized value can become: the colour
    matrix scales it by at most its largest absolute row sum g; blur averages it; solarize mirrors
    it, and where the two sides fall either side of its threshold (x < 128 <= x + g) the outputs are
    x and 255 - x - g: one more level apart."""
    gain = np.abs(colour_matrices(params, view)[:, :, :3]).sum(axis=2).max(axis=1)
    threshold_jump = params.solarize[:, view].astype(bool)
    return (levels * np.maximum(gain, 1.0) + threshold_jump + 1e-3)[:, None, None, None]


def reference_views(frames, params, view: int, size: int) -> np.ndarray:
    colours = colour_matrices(params, view)
    out = []
    for row, frame in enumerate(frames):
        resized = reference_resize(frame, params.crop_boxes[row, view], size)
        normalised = reference_view(resized, colours[row], float(params.blur_sigma[row, view]),
                                    bool(params.solarize[row, view]), bool(params.flips[row, view]),
                                    view_blur_window(size))
        out.append((normalised * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0)
    return np.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("start, length, in_size, out_size", [
    (0, 120, 120, 32), (10, 51, 120, 32), (30, 13, 97, 32), (150, 50, 203, 31), (3, 7, 9, 224), (0, 1080, 1080, 224),
    (0, 1, 5, 17), (2, 5, 5, 3)])
def test_resize_matrices_match_the_reference(device, start, length, in_size, out_size):
    padded = in_size + 7
    starts, lengths = torch.tensor([float(start)] * 2, device=device), torch.tensor([float(length)] * 2, device=device)
    matrices = resize_matrices(starts, lengths, torch.tensor([in_size] * 2, device=device), out_size, padded,
                               resize_taps(length / out_size), torch.tensor([False, True], device=device)).cpu().double()
    expected = resize_weights(start, length, in_size, out_size)
    np.testing.assert_allclose(matrices[0, :, :in_size].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(matrices[1, :, :in_size].numpy(), expected[::-1], atol=1e-6)  # flipped
    assert float(matrices[:, :, in_size:].abs().max()) == 0.0  # the padding is never read
    np.testing.assert_allclose(matrices.sum(dim=2).numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(ONE_AUGMENTATION) + ["all"])
def test_views_match_the_float64_reference(device, name):
    rng = np.random.default_rng()
    size = int(rng.choice([23, 32, 45]))
    frames, frame_hw, params = sampled(rng, 7, size, view_config(name))
    for view in (0, 1):
        expected = reference_views(frames, params, view, size)
        got = torch_views(frames, frame_hw, params, view, size, device)
        error = np.abs(got - expected)
        # float32 matches but for the uint8 rounding of a resized value within float error of .5 (one
        # level, scaled by the colour matrix); the GPU's matmuls may run in TF32 and move a few by 2
        assert error.mean() < (0.01 if device == "cpu" else 0.06), (name, view, error.mean())
        assert (error <= level_bound(params, view, 1.0 if device == "cpu" else 2.0)).all(), (name, view, error.max())


@pytest.mark.parametrize("device", DEVICES)
def test_output_dtypes_and_single_frame_sizes(device):
    rng = np.random.default_rng()
    frames, frame_hw, params = sampled(rng, 3, 16, ViewConfig(), sizes=[(64, 80)] * 3)  # one stack, no padding
    reference = torch_views(frames, frame_hw, params, 1, 16, device)
    for dtype, atol in ((torch.bfloat16, 2.5), (torch.float16, 0.3)):  # of 255: the dtype's own rounding
        np.testing.assert_allclose(torch_views(frames, frame_hw, params, 1, 16, device, dtype), reference, atol=atol)


def dali_views(frames, params, size: int):
    """DALI's graph (pipeline.py, "frames" input, CPU) on the same frames and parameters."""
    from vito_fast.data.pipeline import build_pair_pipeline, feed_pipeline, view_arguments

    pipeline = build_pair_pipeline("frames", batch_size=len(frames), image_size=size, device="cpu",
                                   output_dtype="float32", num_threads=1, prefetch=1)
    inputs = {"image0": list(frames), "image1": list(frames)}
    for view in (0, 1):
        inputs.update(view_arguments(params, view, view_blur_window(size)))
    feed_pipeline(pipeline, inputs)
    outputs = pipeline.run()
    return [(np.array(output.as_tensor(), dtype=np.float64) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0
            for output in outputs]


@pytest.mark.parametrize("name", sorted(ONE_AUGMENTATION) + ["all"])
def test_each_augmentation_matches_dali_on_the_same_parameters(name):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    rng = np.random.default_rng()
    size = 40
    frames, frame_hw, params = sampled(rng, 12, size, view_config(name))
    dali = dali_views(frames, params, size)
    for view in (0, 1):
        error = np.abs(torch_views(frames, frame_hw, params, view, size, "cpu") - dali[view])
        assert error.mean() < 0.01, (name, view, error.mean())  # the same uint8 levels but for rare rounding
        assert (error <= level_bound(params, view, 1.0)).all(), (name, view, error.max())


def test_statistics_over_many_samples_match_dali():
    """Every augmentation at the paper's probabilities on 192 samples: the two backends' per-channel
    means and spreads, and their histograms of pixel values, agree (each sample its own frame)."""
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    rng = np.random.default_rng()
    size = 32
    frames, frame_hw, params = sampled(rng, 192, size, ViewConfig())
    dali = dali_views(frames, params, size)
    bins = np.arange(-12.5, 270.0, 5.0)  # edges between levels: the clamped 0 and 255 sit inside bins
    for view in (0, 1):
        ours, theirs = torch_views(frames, frame_hw, params, view, size, "cpu"), dali[view]
        np.testing.assert_allclose(ours.mean(axis=(0, 1, 2)), theirs.mean(axis=(0, 1, 2)), atol=0.02)
        np.testing.assert_allclose(ours.std(axis=(0, 1, 2)), theirs.std(axis=(0, 1, 2)), atol=0.02)
        per_sample = np.abs(ours.mean(axis=(1, 2, 3)) - theirs.mean(axis=(1, 2, 3)))
        assert per_sample.max() < 0.05, per_sample.max()
        ours_hist = np.histogram(ours, bins)[0] / ours.size
        theirs_hist = np.histogram(theirs, bins)[0] / theirs.size
        assert 0.5 * np.abs(ours_hist - theirs_hist).sum() < 0.002  # total variation distance
