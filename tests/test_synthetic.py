"""The built-in synthetic videos: files, manifest, masks that match the pixels, determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import maximum_filter

from vito_fast.synthetic import SyntheticDataset, generate_dataset
from vito_fast.data.manifest import read_manifest
from vito_fast.prepare.probe import probe_video
from vito_fast.synthetic.videos import (INSTANCE_DISTRACTOR, INSTANCE_MAIN, NUM_BACKGROUNDS, background_textures,
                                      class_names, render_clip, shared_background)

SMALL = dict(num_classes=3, videos_per_class=3, num_frames=12, fps=12, size=(64, 80), progress=False)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, pyav) -> SyntheticDataset:
    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "data", seed=3, **SMALL)


def test_files_manifest_and_index_agree(small_dataset):
    assert len(small_dataset.videos) == 9
    assert small_dataset.class_names == class_names(3) == ["disc-stripes", "square-checker", "triangle-dots"]
    records = read_manifest(small_dataset.manifest_path)
    assert [record.path for record in records] == [video.path for video in small_dataset.videos]
    assert [record.label for record in records] == [video.label for video in small_dataset.videos]
    assert small_dataset.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for record in records:
        assert (record.num_frames, record.fps, record.width, record.height, record.codec) == (12, 12.0, 80, 64, "vp9")
        assert record.duration == pytest.approx(1.0)
    probed = probe_video(records[4].path, "full")  # what `vito-fast prepare` would see
    assert (probed.codec, probed.num_frames, probed.fps, probed.width, probed.height) == ("vp9", 12, 12.0, 80, 64)
    reopened = SyntheticDataset.open(small_dataset.root)
    assert reopened == small_dataset


def test_masks_shapes_values_and_labels(small_dataset):
    for index, video in enumerate(small_dataset.videos):
        instances = small_dataset.load_masks(index)
        classes = small_dataset.load_masks(index, kind="classes")
        assert instances.shape == classes.shape == (12, 64, 80) and instances.dtype == np.uint8
        assert set(np.unique(classes)) <= {0, video.class_id + 1} | (
            {video.distractor_class_id + 1} if video.distractor_class_id is not None else set())
        assert np.array_equal(classes[instances == INSTANCE_MAIN], np.full((instances == INSTANCE_MAIN).sum(),
                                                                           video.class_id + 1))
        assert (INSTANCE_DISTRACTOR in instances) == (video.distractor_class_id is not None)
        main_area = (instances == INSTANCE_MAIN).mean(axis=(1, 2))
        # the main object is always in view and never fills the frame (radius 0.17-0.24 of the short side)
        assert main_area.min() > 0.01 and main_area.max() < 0.4


def test_mask_area_and_centroid_follow_the_recorded_track(small_dataset):
    """A disc wholly in view and not occluded covers pi r^2 pixels around its recorded centre."""
    checked = 0
    for index, video in enumerate(small_dataset.videos):
        if video.class_id != 0:
            continue
        instances = small_dataset.load_masks(index)
        centers, radii = small_dataset.load_object_tracks(index)
        for time in range(instances.shape[0]):
            (x, y), radius = centers[time, 0], radii[time, 0]
            in_view = radius + 1 < x < 80 - radius - 1 and radius + 1 < y < 64 - radius - 1
            distractor_ys, distractor_xs = np.nonzero(instances[time] == INSTANCE_DISTRACTOR)
            occluded = (np.hypot(distractor_xs + 0.5 - x, distractor_ys + 0.5 - y) < radius + 1.5).any()
            if not in_view or occluded:
                continue
            ys, xs = np.nonzero(instances[time] == INSTANCE_MAIN)
            assert len(xs) == pytest.approx(math.pi * radius**2, rel=0.08)
            assert xs.mean() + 0.5 == pytest.approx(x, abs=0.5) and ys.mean() + 0.5 == pytest.approx(y, abs=0.5)
            checked += 1
    assert checked >= 5


def _edge_strength(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) absolute horizontal + vertical luminance differences of (T, H, W, 3) uint8 frames."""
    luminance = frames.astype(np.float32).mean(axis=-1)
    edges = np.zeros_like(luminance)
    edges[:, :, 1:] += np.abs(np.diff(luminance, axis=2))
    edges[:, 1:, :] += np.abs(np.diff(luminance, axis=1))
    return edges


def test_decoded_pixels_inside_masks_look_like_objects(small_dataset):
    """Objects carry high-contrast textures, the background is smooth: the masks must line up with that."""
    for index in range(len(small_dataset.videos)):
        frames = small_dataset.load_frames(index)
        assert frames.shape == (12, 64, 80, 3)
        edges = _edge_strength(frames)
        objects = small_dataset.load_masks(index) > 0
        # the interior of each region (away from outlines, where both sides mix)
        interior = objects.copy()
        background = ~objects
        for axis, shift in ((1, 2), (1, -2), (2, 2), (2, -2)):
            interior &= np.roll(objects, shift, axis=axis)
            background &= ~np.roll(objects, shift, axis=axis)
        assert edges[interior].mean() > 4 * edges[background].mean()
        # the alignment is exact: the object pixels are all textured, pixels well away from the
        # objects are not, and masks shifted by a few pixels miss clearly more texture
        textured = maximum_filter(edges > 40, size=(1, 3, 3))
        far_from_objects = ~maximum_filter(objects, size=(1, 7, 7))
        missed = (objects & ~textured).sum() / objects.sum()
        assert missed < 0.03
        assert (textured & far_from_objects).sum() < 0.005 * far_from_objects.sum()
        for axis, shift in ((1, 5), (1, -5), (2, 5), (2, -5)):
            shifted = np.roll(objects, shift, axis=axis)
            assert (shifted & ~textured).sum() / objects.sum() > 2 * missed + 0.03


def test_decoded_video_matches_the_rendering(small_dataset):
    """Lossy VP9 at high quality: decoded frames stay close to the frames rendered from the seed."""
    rng = np.random.default_rng([3, 4])  # video 4 of seed 3, as generate_dataset draws it
    video = small_dataset.videos[4]
    distractor = None
    if rng.random() < 0.5:
        distractor = int((video.class_id + rng.integers(1, 3)) % 3)
    assert distractor == video.distractor_class_id
    textures = background_textures(3, NUM_BACKGROUNDS, (64, 80), 12)  # shared by the videos of seed 3
    clip = render_clip(rng, video.class_id, distractor, num_frames=12, size=(64, 80),
                       shared_background=shared_background(textures, 3, 4))
    assert np.array_equal(clip.instances, small_dataset.load_masks(4))
    error = np.abs(clip.frames.astype(np.int16) - small_dataset.load_frames(4).astype(np.int16))
    assert error.mean() < 8


@pytest.mark.usefixtures("pyav")
def test_same_seed_same_data_other_seed_other_data(tmp_path):
    settings = {**SMALL, "num_classes": 2, "videos_per_class": 1}
    again = generate_dataset(tmp_path / "again", seed=3, **settings)
    twice = generate_dataset(tmp_path / "twice", seed=3, **settings)
    other = generate_dataset(tmp_path / "other", seed=4, **settings)
    for index in range(2):
        assert np.array_equal(again.load_masks(index), twice.load_masks(index))
        assert np.array_equal(again.load_masks(index, "classes"), twice.load_masks(index, "classes"))
        assert np.array_equal(again.load_frames(index), twice.load_frames(index))
        assert not np.array_equal(again.load_masks(index), other.load_masks(index))


def test_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        generate_dataset(tmp_path, num_classes=99, progress=False)
    with pytest.raises(ValueError, match="even"):
        generate_dataset(tmp_path, size=(63, 64), progress=False)
    with pytest.raises(ValueError, match="codec"):
        generate_dataset(tmp_path, codec="theora", progress=False)
    with pytest.raises(FileNotFoundError, match="generate_dataset"):
        SyntheticDataset.open(tmp_path / "nothing")


def test_videos_pan_over_a_few_shared_background_textures():
    """The background must not identify a video: its pixels come from one of the few shared textures."""
    textures = background_textures(0, 2, (32, 32), 6)
    picks = [shared_background(textures, 0, index)[0] for index in range(12)]
    assert {id(texture) for texture in picks} == {id(texture) for texture in textures}  # both used, nothing else
    clip = render_clip(np.random.default_rng(1), 0, None, num_frames=3, size=(32, 32),
                       shared_background=(textures[1], np.random.default_rng(2)))
    visible = clip.instances[0] == 0
    frame = clip.frames[0].astype(np.float32) / 255
    height, width = textures[1].shape[:2]
    best = min(np.abs(textures[1][top:top + 32, left:left + 32] - frame)[visible].max()
               for top in range(height - 31) for left in range(width - 31))
    assert best <= 1 / 255 + 1e-6  # some window of the shared texture is exactly this frame's background
    other = min(np.abs(textures[0][top:top + 32, left:left + 32] - frame)[visible].max()
                for top in range(textures[0].shape[0] - 31) for left in range(textures[0].shape[1] - 31))
    assert other > 0.05


def test_light_change_scales_colours_over_time_and_leaves_the_scene_alone():
    """Changing light: the same objects and masks, every frame's colours times a slowly varying gain."""
    steady = render_clip(np.random.default_rng(5), 1, 0, num_frames=8, size=(32, 32))
    lit = render_clip(np.random.default_rng(5), 1, 0, num_frames=8, size=(32, 32), light_change=0.3)
    assert np.array_equal(steady.instances, lit.instances) and np.array_equal(steady.centers, lit.centers)
    usable = (steady.frames > 20) & (steady.frames < 180)  # away from rounding and clipping
    gains = np.array([[np.median(lit.frames[t][..., c][usable[t][..., c]] / steady.frames[t][..., c][usable[t][..., c]])
                       for c in range(3)] for t in range(8)])
    assert np.all(np.abs(gains - 1) <= 0.3 + 0.02)
    assert np.ptp(gains, axis=0).max() > 0.1  # the light does change within the clip
    for t in range(8):  # one gain per channel and frame, not per pixel
        for c in range(3):
            ratio = lit.frames[t][..., c][usable[t][..., c]] / steady.frames[t][..., c][usable[t][..., c]]
            assert np.percentile(np.abs(ratio - gains[t, c]), 90) < 0.03


def test_fast_camera_moves_the_background_between_frames():
    slow = render_clip(np.random.default_rng(2), 0, None, num_frames=6, size=(32, 32), camera_speed=(0.0, 0.0))
    fast = render_clip(np.random.default_rng(2), 0, None, num_frames=6, size=(32, 32), camera_speed=(3.0, 3.0))
    background = (slow.instances[0] == 0) & (slow.instances[-1] == 0)
    assert np.array_equal(slow.frames[0][background], slow.frames[-1][background])  # a still camera
    change = np.abs(fast.frames[0].astype(int) - fast.frames[-1].astype(int))[background].mean()
    assert change > 2
    with pytest.raises(ValueError, match="camera_speed"):
        generate_dataset("unused", camera_speed=(2.0, 1.0), progress=False)


def test_clutter_is_transient_and_leaves_the_rest_of_the_clip_alone():
    """Transient clutter: in front, in a few frames only; the scene, the main object and its masks
    elsewhere are those of the clip without it, and clutter pixels are not object pixels."""
    plain = render_clip(np.random.default_rng(4), 1, 2, num_frames=16, size=(48, 48), num_classes=3)
    cluttered = render_clip(np.random.default_rng(4), 1, 2, num_frames=16, size=(48, 48), num_classes=3, clutter=3,
                            clutter_rng=np.random.default_rng(9))
    changed = np.any(plain.frames != cluttered.frames, axis=-1)  # (T, H, W)
    frames_with_clutter = changed.any(axis=(1, 2))
    assert 0 < frames_with_clutter.sum() <= 3 * 4  # three objects, each in at most T/4 frames
    assert not frames_with_clutter.all()  # it does not persist
    assert np.array_equal(plain.centers, cluttered.centers)
    assert np.array_equal(cluttered.instances[~changed], plain.instances[~changed])
    assert np.all(cluttered.instances[changed] == 0) and np.all(cluttered.classes[changed] == 0)
    with pytest.raises(ValueError, match="clutter"):
        generate_dataset("unused", clutter=9, progress=False)


def _clip_and_changed_twin(seed: int, **changes):
    """The same 16-frame clip rendered plainly and with ``changes``; both share the scene and its masks."""
    plain = render_clip(np.random.default_rng(seed), 0, None, num_frames=16, size=(48, 48))
    changed = render_clip(np.random.default_rng(seed), 0, None, num_frames=16, size=(48, 48), **changes)
    assert np.array_equal(plain.instances, changed.instances) and np.array_equal(plain.centers, changed.centers)
    return plain, changed


def test_focus_drift_blurs_some_frames_and_changes_nothing_else():
    sharp, drifting = _clip_and_changed_twin(6, focus_change=3.0, focus_rng=np.random.default_rng(1))

    def detail(frame):  # mean absolute horizontal gradient: what a blur takes away
        return np.abs(np.diff(frame.astype(float), axis=1)).mean()

    ratios = np.array([detail(b) / detail(a) for a, b in zip(sharp.frames, drifting.frames)])
    assert ratios.max() > 0.8 and ratios.min() < 0.6  # sharp frames and soft ones within one clip
    assert np.all(np.abs(drifting.frames.astype(float).mean(axis=(1, 2)) - sharp.frames.mean(axis=(1, 2))) < 3)
    with pytest.raises(ValueError, match="focus_change"):
        generate_dataset("unused", focus_change=5.0, progress=False)


def test_texture_fade_washes_out_the_main_object_texture_and_keeps_its_outline():
    plain, faded = _clip_and_changed_twin(8, texture_fade=0.9, fade_rng=np.random.default_rng(2))
    background = plain.instances == 0
    assert np.array_equal(plain.frames[background], faded.frames[background])
    spread = [faded.frames[t][faded.instances[t] == 1].std(axis=0).mean() /
              plain.frames[t][plain.instances[t] == 1].std(axis=0).mean() for t in range(16)]
    assert min(spread) < 0.4 and max(spread) > 0.8  # washed out in some frames, crisp in others
    with pytest.raises(ValueError, match="texture_fade"):
        generate_dataset("unused", texture_fade=1.5, progress=False)
