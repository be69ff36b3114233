"""The view sampler: C++ vs the NumPy reference, distributions vs the config, purity, bad input."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from vito_fast import _cpp
from vito_fast.data import ViewConfig, ViewParams, sample_view_params, sample_view_params_numpy
from vito_fast.data._philox import philox4x32_10

requires_cpp = pytest.mark.skipif(not _cpp.available(), reason=f"vito_fast._C not built: {_cpp.load_error()}")

INTEGER_FIELDS = ("sample_ids", "frame_indices", "delta_frames", "swapped", "crop_boxes", "flips",
                  "jitter_applied", "jitter_order", "grayscale", "solarize")
FLOAT_FIELDS = ("brightness", "contrast", "saturation", "hue", "blur_sigma")
SAMPLERS = {"dispatch": sample_view_params, "numpy": sample_view_params_numpy}  # dispatch = C++ when built
CUSTOM_CONFIG = ViewConfig(
    flip_probability=(0.3, 0.9), jitter_probability=(0.6, 0.1), grayscale_probability=(0.05, 0.5),
    blur_probability=(0.25, 0.75), solarize_probability=(0.4, 0.0), swap_probability=0.3,
    brightness=0.8, contrast=1.5, saturation=0.1, hue=0.5, blur_sigma=(0.5, 3.0),
)


def random_clips(batch: int, rng: np.random.Generator, config: ViewConfig = ViewConfig(), max_side: int = 600):
    """Inputs for `batch` clips that fit the config: (ids, num_frames, fps, frame_hw), odd sizes included."""
    fps = rng.uniform(1.0, 120.0, batch)
    shortest = np.rint(config.delta_seconds[0] * fps).astype(np.int64)
    num_frames = shortest + 1 + rng.integers(0, 400, batch)
    frame_hw = rng.integers(1, max_side, (batch, 2))
    ids = rng.integers(0, 2**63 - 1, batch, dtype=np.int64)
    return ids, num_frames, fps, frame_hw


def assert_same_params(actual: ViewParams, expected: ViewParams) -> None:
    for name in INTEGER_FIELDS:
        np.testing.assert_array_equal(getattr(actual, name), getattr(expected, name), err_msg=name)
    for name in FLOAT_FIELDS:
        np.testing.assert_allclose(getattr(actual, name), getattr(expected, name), rtol=0, atol=1e-6, err_msg=name)
    for name, value in actual.to_dict().items():
        assert value.dtype == getattr(expected, name).dtype, name


def within_four_sigma(flags: np.ndarray, probability: float) -> bool:
    if probability in (0.0, 1.0):
        return bool(np.all(flags == (probability == 1.0)))
    sigma = math.sqrt(probability * (1 - probability) / flags.size)
    return abs(flags.mean() - probability) <= 4 * sigma


# --- the random source ---------------------------------------------------------------------------

PHILOX_KNOWN_ANSWERS = [  # Random123's kat_vectors for Philox-4x32-10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", PHILOX_KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(word) for word in philox4x32_10(counter, key)) == expected
    if _cpp.available():
        assert tuple(_cpp.require("philox4x32_10")(list(counter), list(key))) == expected


# --- C++ and NumPy agree -------------------------------------------------------------------------

@st.composite
def view_configs(draw) -> ViewConfig:
    unit = st.floats(0.0, 1.0)
    pair = st.tuples(unit, unit)
    distribution = draw(st.sampled_from(["uniform", "fixed"]))
    delta_low = draw(st.floats(0.0, 3.0))
    delta_high = delta_low if distribution == "fixed" else delta_low + draw(st.floats(0.0, 3.0))
    scale_low = draw(st.floats(0.01, 1.0))
    ratio_low = draw(st.floats(0.2, 2.0))
    sigma_low = draw(st.floats(0.01, 3.0))
    return ViewConfig(
        delta_distribution=distribution, delta_seconds=(delta_low, delta_high),
        crop_scale=(scale_low, draw(st.floats(scale_low, 1.0))),
        crop_ratio=(ratio_low, ratio_low * draw(st.floats(1.0, 4.0))),
        crop_attempts=draw(st.integers(1, 20)),
        flip_probability=draw(pair), jitter_probability=draw(pair), grayscale_probability=draw(pair),
        blur_probability=draw(pair), solarize_probability=draw(pair), swap_probability=draw(unit),
        brightness=draw(st.floats(0.0, 1.5)), contrast=draw(st.floats(0.0, 1.5)),
        saturation=draw(st.floats(0.0, 1.5)), hue=draw(st.floats(0.0, 0.5)),
        blur_sigma=(sigma_low, sigma_low + draw(st.floats(0.0, 3.0))),
    )


@requires_cpp
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=view_configs(), batch=st.integers(1, 300), data_seed=st.integers(0, 2**32 - 1),
       seed=st.integers(0, 2**64 - 1), epoch=st.integers(0, 2**32 - 1))
def test_cpp_matches_numpy_for_random_configs(config, batch, data_seed, seed, epoch):
    ids, num_frames, fps, frame_hw = random_clips(batch, np.random.default_rng(data_seed), config)
    kwargs = dict(seed=seed, epoch=epoch, config=config)
    assert_same_params(sample_view_params(ids, num_frames, fps, frame_hw, **kwargs),
                       sample_view_params_numpy(ids, num_frames, fps, frame_hw, **kwargs))


@requires_cpp
def test_cpp_matches_numpy_on_a_large_threaded_batch():
    ids, num_frames, fps, frame_hw = random_clips(9000, np.random.default_rng(5), max_side=3000)
    expected = sample_view_params_numpy(ids, num_frames, fps, frame_hw, seed=11, epoch=3)
    for threads in (None, 1, 2, 3, 7):
        actual = sample_view_params(ids, num_frames, fps, frame_hw, seed=11, epoch=3, num_threads=threads)
        assert_same_params(actual, expected)


def test_falls_back_to_numpy_without_the_extension(monkeypatch):
    ids, num_frames, fps, frame_hw = random_clips(50, np.random.default_rng(2))
    expected = sample_view_params_numpy(ids, num_frames, fps, frame_hw, seed=1, epoch=0)
    monkeypatch.setattr(_cpp, "available", lambda: False)
    monkeypatch.setattr(_cpp, "require", lambda name: pytest.fail("the NumPy path must not ask for _C"))
    assert_same_params(sample_view_params(ids, num_frames, fps, frame_hw, seed=1, epoch=0), expected)


# --- purity: a function of (seed, epoch, sample id, config) only ---------------------------------

@pytest.mark.parametrize("path", SAMPLERS)
def test_batch_independence(path):
    sample = SAMPLERS[path]
    rng = np.random.default_rng(3)
    ids, num_frames, fps, frame_hw = random_clips(600, rng)
    whole = sample(ids, num_frames, fps, frame_hw, seed=7, epoch=2, config=CUSTOM_CONFIG)
    order = rng.permutation(600)
    for part in np.array_split(order, [1, 5, 250]):
        piece = sample(ids[part], num_frames[part], fps[part], frame_hw[part], seed=7, epoch=2, config=CUSTOM_CONFIG)
        expected = ViewParams(**{name: value[part] for name, value in whole.to_dict().items()})
        assert_same_params(piece, expected)


@pytest.mark.parametrize("path", SAMPLERS)
def test_deterministic_and_seed_epoch_dependent(path):
    sample = SAMPLERS[path]
    ids, num_frames, fps, _ = random_clips(400, np.random.default_rng(4))
    frame_hw = (256, 341)  # large enough that the crops themselves always differ
    first = sample(ids, num_frames, fps, frame_hw, seed=5, epoch=1)
    assert_same_params(sample(ids, num_frames, fps, frame_hw, seed=5, epoch=1), first)
    for seed, epoch in ((6, 1), (5, 2), (5 + 2**32, 1)):
        other = sample(ids, num_frames, fps, frame_hw, seed=seed, epoch=epoch)
        assert (other.crop_boxes != first.crop_boxes).any(axis=(1, 2)).mean() > 0.9
        assert (other.frame_indices != first.frame_indices).any(axis=1).mean() > 0.5


@pytest.mark.parametrize("path", SAMPLERS)
def test_scalars_broadcast_and_noncontiguous_inputs(path):
    sample = SAMPLERS[path]
    ids = np.arange(40, dtype=np.int64)[::-2]
    explicit = sample(ids.copy(), np.full(20, 90), np.full(20, 30.0), np.tile([120, 77], (20, 1)), seed=0, epoch=0)
    broadcast = sample(ids, 90, 30.0, (120, 77), seed=0, epoch=0)
    assert_same_params(broadcast, explicit)
    assert not np.shares_memory(broadcast.sample_ids, ids)


def test_view_params_fields_shapes_and_docstring():
    params = sample_view_params(np.arange(3), 50, 25.0, (64, 48), seed=0, epoch=0)
    expected = {"sample_ids": ((3,), np.int64), "frame_indices": ((3, 2), np.int64), "delta_frames": ((3,), np.int64),
                "swapped": ((3,), np.bool_), "crop_boxes": ((3, 2, 4), np.int64), "jitter_order": ((3, 2, 4), np.int8)}
    for name in ("flips", "jitter_applied", "grayscale", "solarize"):
        expected[name] = ((3, 2), np.bool_)
    for name in FLOAT_FIELDS:
        expected[name] = ((3, 2), np.float32)
    assert {name: (value.shape, value.dtype) for name, value in params.to_dict().items()} == expected
    assert len(params) == 3
    for field in dataclasses.fields(ViewParams):
        assert field.name in ViewParams.__doc__
    empty = sample_view_params(np.zeros(0, dtype=np.int64), 10, 25.0, (8, 8), seed=0, epoch=0)
    assert len(empty) == 0 and empty.crop_boxes.shape == (0, 2, 4)


# --- semantics and distributions -----------------------------------------------------------------

@pytest.mark.parametrize("path", SAMPLERS)
def test_frames_and_crops_stay_inside(path):
    ids, num_frames, fps, frame_hw = random_clips(3000, np.random.default_rng(6), max_side=50)
    num_frames = np.maximum(1, num_frames % 40)  # short clips: Δt is clamped often
    params = SAMPLERS[path](ids, num_frames, fps, frame_hw, seed=9, epoch=0)
    assert ((params.frame_indices >= 0) & (params.frame_indices < num_frames[:, None])).all()
    later_minus_first = params.frame_indices[:, 0] - params.frame_indices[:, 1]
    np.testing.assert_array_equal(later_minus_first, np.where(params.swapped, 1, -1) * params.delta_frames)
    assert (params.delta_frames == np.minimum(num_frames - 1, np.rint(2.5 * fps))).any()  # clamped ones
    top, left, height, width = np.moveaxis(params.crop_boxes, -1, 0)
    heights, widths = frame_hw[:, None, 0], frame_hw[:, None, 1]
    assert ((top >= 0) & (left >= 0) & (height >= 1) & (width >= 1)).all()
    assert ((top + height <= heights) & (left + width <= widths)).all()


def torchvision_crops(height: int, width: int, count: int, scale, ratio) -> np.ndarray:
    import torch
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(1234)  # a fixed draw: the KS thresholds then pass or fail for good
    image = torch.empty(3, height, width)
    return np.array([RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(count)])


@pytest.mark.parametrize("height, width", [(256, 341), (40, 300)])
def test_crops_match_torchvision_get_params(height, width):
    """Two-sample KS against torchvision itself: rejection, rounding and fallback included."""
    count = 4000
    params = sample_view_params(np.arange(count), 10, 25.0, (height, width), seed=21, epoch=0)
    ours = params.crop_boxes[:, 0]
    theirs = torchvision_crops(height, width, count, (0.08, 1.0), (3 / 4, 4 / 3))
    for name, column in (("area", lambda b: b[:, 2] * b[:, 3]), ("aspect", lambda b: b[:, 3] / b[:, 2]),
                         ("top", lambda b: b[:, 0]), ("left", lambda b: b[:, 1])):
        p_value = stats.ks_2samp(column(ours), column(theirs)).pvalue
        assert p_value > 1e-4, f"{name}: p = {p_value}"


def test_centre_crop_fallback_matches_torchvision():
    """Frames so thin that every attempt is rejected: the deterministic centre crop."""
    config = ViewConfig(crop_scale=(0.9, 1.0))
    for height, width in ((1, 1000), (700, 3), (4, 30), (30, 4)):
        expected = torchvision_crops(height, width, 1, config.crop_scale, config.crop_ratio)[0]
        for sample in SAMPLERS.values():
            params = sample(np.arange(20), 10, 25.0, (height, width), seed=0, epoch=0, config=config)
            assert (params.crop_boxes == expected).all(), (height, width, params.crop_boxes[0, 0], expected)


def test_crop_scale_and_ratio_follow_the_config():
    """On a large square frame with scale <= 0.5 no attempt is rejected: scale and log-ratio are
    uniform up to pixel rounding (relative error < 1e-3 here)."""
    config = ViewConfig(crop_scale=(0.08, 0.5), crop_ratio=(0.6, 1.5))
    params = sample_view_params(np.arange(20000), 10, 25.0, (4096, 4096), seed=3, epoch=0, config=config)
    boxes = params.crop_boxes.reshape(-1, 4).astype(np.float64)
    scale = boxes[:, 2] * boxes[:, 3] / 4096**2
    log_ratio = np.log(boxes[:, 3] / boxes[:, 2])
    assert stats.kstest(scale, stats.uniform(0.08, 0.42).cdf).pvalue > 1e-4
    low, high = math.log(0.6), math.log(1.5)
    assert stats.kstest(log_ratio, stats.uniform(low, high - low).cdf).pvalue > 1e-4
    tops = boxes[:, 0] / (4096 - boxes[:, 2])
    assert stats.kstest(tops, stats.uniform(0, 1).cdf).pvalue > 1e-4


@pytest.mark.parametrize("delta_seconds", [(0.0, 2.5), (0.5, 1.5)])
def test_delta_seconds_uniform_and_first_frame_uniform(delta_seconds):
    config = ViewConfig(delta_seconds=delta_seconds)
    fps, num_frames = 1000.0, 10**6  # frame rounding below 1e-3 s, no clamping
    params = sample_view_params(np.arange(20000), num_frames, fps, (8, 8), seed=2, epoch=5, config=config)
    low, high = delta_seconds
    assert stats.kstest(params.delta_frames / fps, stats.uniform(low, high - low).cdf).pvalue > 1e-4
    earlier = params.frame_indices.min(axis=1)
    assert stats.kstest(earlier / (num_frames - 1 - params.delta_frames), stats.uniform(0, 1).cdf).pvalue > 1e-4


def test_fixed_delta_and_its_validation():
    config = ViewConfig(delta_distribution="fixed", delta_seconds=(0.4, 0.4))
    fps = np.array([25.0, 30.0, 29.97, 60.0])
    params = sample_view_params(np.arange(4), 100, fps, (8, 8), seed=0, epoch=0, config=config)
    np.testing.assert_array_equal(params.delta_frames, np.rint(0.4 * fps))
    with pytest.raises(ValueError, match="delta_seconds"):
        ViewConfig(delta_distribution="fixed", delta_seconds=(0.4, 0.5))


@pytest.mark.parametrize("path", SAMPLERS)
def test_half_frames_round_half_to_even(path):
    config = ViewConfig(delta_distribution="fixed", delta_seconds=(0.25, 0.25))
    fps = np.array([10.0, 6.0, 14.0, 18.0, 2.0])  # 2.5, 1.5, 3.5, 4.5, 0.5 frames exactly
    params = SAMPLERS[path](np.arange(5), 100, fps, (8, 8), seed=0, epoch=0, config=config)
    np.testing.assert_array_equal(params.delta_frames, [2, 2, 4, 4, 0])


@pytest.mark.parametrize("config", [ViewConfig(), CUSTOM_CONFIG], ids=["paper", "custom"])
def test_flag_frequencies_and_jitter_distributions_per_recipe(config):
    count = 20000
    params = sample_view_params(np.arange(count), 300, 30.0, (224, 224), seed=13, epoch=0, config=config)
    assert within_four_sigma(params.swapped, config.swap_probability)
    for field, name in (("flips", "flip_probability"), ("jitter_applied", "jitter_probability"),
                        ("grayscale", "grayscale_probability"), ("solarize", "solarize_probability")):
        for view in (0, 1):
            assert within_four_sigma(getattr(params, field)[:, view], getattr(config, name)[view]), (field, view)
    for view in (0, 1):
        assert within_four_sigma(params.blur_sigma[:, view] > 0, config.blur_probability[view]), view
    sigma = params.blur_sigma[params.blur_sigma > 0]
    assert stats.kstest(sigma, stats.uniform(config.blur_sigma[0], np.ptp(config.blur_sigma)).cdf).pvalue > 1e-4

    applied = params.jitter_applied
    for name, low, high in (("brightness", max(0, 1 - config.brightness), 1 + config.brightness),
                            ("contrast", max(0, 1 - config.contrast), 1 + config.contrast),
                            ("saturation", max(0, 1 - config.saturation), 1 + config.saturation),
                            ("hue", -config.hue, config.hue)):
        values = getattr(params, name)
        assert (values[~applied] == (0.0 if name == "hue" else 1.0)).all(), name
        assert stats.kstest(values[applied], stats.uniform(low, high - low).cdf).pvalue > 1e-4, name
    orders = params.jitter_order[applied]
    assert (np.sort(orders, axis=1) == np.arange(4)).all()
    codes = orders @ np.array([64, 16, 4, 1])
    _, counts = np.unique(codes, return_counts=True)
    assert counts.size == 24 and stats.chisquare(counts).pvalue > 1e-4
    assert (params.jitter_order[~applied] == np.arange(4)).all()


# --- bad input -----------------------------------------------------------------------------------

GOOD = dict(sample_ids=np.arange(4), num_frames=np.full(4, 100), fps=np.full(4, 25.0),
            frame_hw=np.tile([64, 80], (4, 1)), seed=0, epoch=0)
BAD_INPUTS = [
    ("num_frames", dict(num_frames=np.full(3, 100))),
    ("fps", dict(fps=np.full(5, 25.0))),
    ("frame_hw", dict(frame_hw=np.tile([64, 80], (3, 1)))),
    ("frame_hw", dict(frame_hw=np.ones((4, 3), dtype=np.int64))),
    ("num_frames", dict(num_frames=np.array([100, 0, 100, 100]))),
    ("fps", dict(fps=np.array([25.0, 0.0, 25.0, 25.0]))),
    ("fps", dict(fps=np.array([25.0, -3.0, 25.0, 25.0]))),
    ("fps", dict(fps=np.array([25.0, np.nan, 25.0, 25.0]))),
    ("fps", dict(fps=np.array([25.0, np.inf, 25.0, 25.0]))),
    ("frame_hw", dict(frame_hw=np.array([[64, 80], [0, 80], [64, 80], [64, 80]]))),
    ("frame_hw", dict(frame_hw=np.array([[64, 80], [64, -2], [64, 80], [64, 80]]))),
    ("sample_ids", dict(sample_ids=np.array([0, -1, 2, 3]))),
    ("sample_ids", dict(sample_ids=np.arange(4).reshape(2, 2))),
    ("sample_ids", dict(sample_ids=np.array([0.0, 1.5, 2.0, 3.0]))),
    ("seed", dict(seed=-1)),
    ("epoch", dict(epoch=2**32)),
    ("config", dict(config={"crop_scale": (0.1, 1.0)})),
    ("delta_seconds", dict(num_frames=np.array([100, 20, 100, 100]), config=ViewConfig(delta_seconds=(1.0, 2.0)))),
]


@pytest.mark.parametrize("path", SAMPLERS)
@pytest.mark.parametrize("argument, change", BAD_INPUTS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_value_error_naming_it(path, argument, change):
    with pytest.raises(ValueError, match=argument):
        SAMPLERS[path](**{**GOOD, **change})


@requires_cpp
def test_extension_refuses_invalid_inputs_when_called_directly():
    sample_native = _cpp.require("sample_view_params")
    ids, frames, rates, sizes = np.arange(3), np.array([5, 0, 5]), np.full(3, 25.0), np.ones((3, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="position 1"):
        sample_native(ids, frames, rates, sizes, 0, 0, ViewConfig().native(), 0)
    with pytest.raises(ValueError, match="frame_hw"):
        sample_native(ids, np.full(3, 5), rates, np.ones((3, 3), dtype=np.int64), 0, 0, ViewConfig().native(), 0)


def test_too_short_clip_error_names_the_sample_and_values():
    with pytest.raises(ValueError, match=r"num_frames=20 at fps=25\.0 \(sample id 1.*25 frames"):
        sample_view_params(**{**GOOD, "num_frames": np.array([100, 20, 100, 100]),
                              "config": ViewConfig(delta_seconds=(1.0, 2.0))})


BAD_CONFIGS = [
    ("delta_distribution", dict(delta_distribution="gamma")),
    ("delta_seconds", dict(delta_seconds=(-1.0, 2.0))),
    ("delta_seconds", dict(delta_seconds=(2.0, 1.0))),
    ("crop_scale", dict(crop_scale=(0.0, 1.0))),
    ("crop_scale", dict(crop_scale=(0.5, 0.2))),
    ("crop_scale", dict(crop_scale=(0.5, 1.5))),
    ("crop_ratio", dict(crop_ratio=(2.0, 1.0))),
    ("crop_ratio", dict(crop_ratio=(1e-6, 1.0))),
    ("crop_attempts", dict(crop_attempts=0)),
    ("crop_attempts", dict(crop_attempts=2.5)),
    ("flip_probability", dict(flip_probability=(0.5, 1.5))),
    ("grayscale_probability", dict(grayscale_probability=(0.5,))),
    ("blur_probability", dict(blur_probability=0.5)),
    ("solarize_probability", dict(solarize_probability=(0.1, float("nan")))),
    ("brightness", dict(brightness=-0.1)),
    ("hue", dict(hue=0.6)),
    ("blur_sigma", dict(blur_sigma=(0.0, 1.0))),
    ("swap_probability", dict(swap_probability=1.5)),
]


@pytest.mark.parametrize("field, change", BAD_CONFIGS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_CONFIGS)])
def test_bad_config_raises_value_error_naming_the_field(field, change):
    with pytest.raises(ValueError, match=f"ViewConfig.{field}"):
        ViewConfig(**change)
