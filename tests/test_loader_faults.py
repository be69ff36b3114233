"""PairLoader on media as users have it, and on files that go bad while it runs.

Everyday frame sizes (rows not a multiple of 32 bytes), H.264 and VP9, through ``prepare scan``
and the video path with decode worker processes; then a truncated shard, a file removed
mid-epoch, a file replaced by a named pipe (opening it blocks), a worker killed with SIGKILL, and
a corpus smaller than a batch. Each: the epoch finishes, the file is named once, ``stats`` counts
it, and no other sample is lost.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from videos import decode_frame_number, write_video
from vito_fast.data import LoaderConfig, PairLoader, ViewConfig
from vito_fast.data.augment import IMAGENET_MEAN, IMAGENET_STD
from vito_fast.prepare.scan import scan_videos
from vito_fast.data.manifest import write_manifest

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed: PairLoader decodes and augments with it")

# whole frames (any aspect falls back to the full frame), no flips and no colour: the code survives
WHOLE_FRAME = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(0.1, 10.0), crop_attempts=1,
                         flip_probability=(0.0, 0.0), jitter_probability=(0.0, 0.0),
                         grayscale_probability=(0.0, 0.0), blur_probability=(0.0, 0.0),
                         solarize_probability=(0.0, 0.0), delta_seconds=(0.0, 0.8))
CONFIG = LoaderConfig(image_size=96, dtype="float32", num_threads=2, decode_workers=1, views=WHOLE_FRAME)
# (codec, suffix, width, height): libx264 in yuv420p needs even sizes, VP9 takes odd heights
EVERYDAY = [("h264", ".mp4", width, 240) for width in (176, 312, 426, 456, 602, 854)] + \
           [("vp9", ".webm", width, height) for width, height in ((176, 99), (312, 175), (426, 241), (456, 257),
                                                                  (602, 339), (854, 481))]


def shown_frames(view) -> np.ndarray:
    """(B,) frame numbers shown by the views of a batch."""
    hwc = view.float().permute(0, 2, 3, 1).numpy().astype(np.float64)
    images = np.clip((hwc * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0, 0, 255).astype(np.uint8)
    return np.array([decode_frame_number(image) for image in images])


def scanned(folder: Path, videos) -> str:
    records, rejected = scan_videos([str(folder)], workers=0, progress=False, min_seconds=0.5)
    assert not rejected, rejected
    assert len(records) == len(videos)
    return str(write_manifest(folder / "manifest.jsonl", records))


@pytest.fixture(scope="module")
def everyday(tmp_path_factory):
    folder = tmp_path_factory.mktemp("everyday")
    for codec, suffix, width, height in EVERYDAY:
        write_video(folder / f"{codec}-{width}x{height}{suffix}", codec=codec, width=width, height=height,
                    fps=10, num_frames=12, gop=4)
    return scanned(folder, EVERYDAY)


def test_everyday_sizes_and_codecs_decode_in_workers(everyday):
    with PairLoader(everyday, 2, device="cpu", seed=0, config=CONFIG) as loader:
        batches = list(loader) + list(loader)  # the second epoch reuses the shared-memory arenas
        assert len(batches) == 2 * len(EVERYDAY) // 2 and loader.host.arena_count < len(batches)
        assert loader.stats.replaced == 0 and not loader.stats.failed_files, loader.stats.failed_files
        assert loader.host.decode_worker_pids and loader.stats.worker_restarts == 0  # decoded out of process
        for batch in batches:
            for view in (0, 1):
                shown = shown_frames(batch[f"view{view + 1}"])
                np.testing.assert_array_equal(shown, batch["frame_indices"][:, view])


def test_prefetch_depth_and_workers_do_not_change_the_batches(everyday):
    def epoch(**changes):
        with PairLoader(everyday, 4, device="cpu", seed=3, config=dataclasses.replace(CONFIG, **changes)) as loader:
            return [(batch["sample_ids"], batch["frame_indices"], batch["view1"].numpy()) for batch in loader]

    reference = epoch(prefetch=1, decode_workers=0)
    for other in (epoch(prefetch=3, decode_workers=2), epoch(prefetch=2)):
        for (ids, frames, views), (ids2, frames2, views2) in zip(reference, other):
            np.testing.assert_array_equal(ids, ids2)
            np.testing.assert_array_equal(frames, frames2)
            np.testing.assert_allclose(views, views2, atol=1e-5)


def small_corpus(folder: Path, count: int = 6) -> str:
    for clip in range(count):
        write_video(folder / f"clip{clip}.webm", codec="vp9", width=96, height=64, fps=10, num_frames=20, gop=5)
    return scanned(folder, range(count))


@pytest.fixture
def corpus(tmp_path):
    return small_corpus(tmp_path)


def served_files(loader, batches):
    return {loader.source.name(int(clip)) for batch in batches for clip in batch["sample_ids"]}


def test_file_removed_mid_epoch_is_replaced_and_named_once(corpus):
    with PairLoader(corpus, 1, device="cpu", seed=1, config=dataclasses.replace(CONFIG, prefetch=1)) as loader:
        order = [loader.source.name(int(clip)) for clip in loader.epoch_clips(0)]
        iterator = iter(loader)
        first = next(iterator)
        victim = order[-1]  # shown in the last of 6 batches, not read yet (the host is 2 batches ahead)
        os.unlink(victim)
        with pytest.warns(RuntimeWarning, match=Path(victim).name) as caught:
            rest = list(iterator)
        assert len(rest) == len(loader) - 1
        assert sum(Path(victim).name in str(warning.message) for warning in caught) == 1
        assert list(loader.stats.failed_files) == [victim]
        assert loader.stats.replaced == 1 and loader.stats.samples == len(loader) == 6
        assert victim not in served_files(loader, [first, *rest])


def test_a_broken_file_cut_into_several_clips_is_named_once_in_plain_words(tmp_path):
    """Two clips of one file that was cut short after the scan: one warning for the file, its path said
    once, FFmpeg's own words without its errno and the path repeated."""
    import warnings

    for index in range(3):
        write_video(tmp_path / f"clip{index}.mp4", codec="h264", width=64, height=48, fps=10, num_frames=30, gop=5)
    records, _ = scan_videos([str(tmp_path)], workers=0, progress=False, min_seconds=0.5)
    manifest = write_manifest(tmp_path / "manifest.jsonl", records * 2)  # two clips of each file
    victim = tmp_path / "clip1.mp4"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with PairLoader(str(manifest), 2, device="cpu", seed=0, config=CONFIG) as loader:
            batches = list(loader)
            assert list(loader.stats.failed_files) == [str(victim)] and loader.stats.replaced == 2
    assert len(batches) == 3
    (warning,) = [str(w.message) for w in caught if str(victim) in str(w.message)]
    assert warning.count(str(victim)) == 1 and "[Errno" not in warning, warning
    assert "Invalid data found when processing input" in warning, warning


def test_named_pipe_times_out_and_is_replaced(corpus):
    fifo = str(Path(corpus).parent / "clip2.webm")
    os.unlink(fifo)
    os.mkfifo(fifo)  # opening it blocks until a writer comes, which never happens
    config = dataclasses.replace(CONFIG, sample_timeout=1.5)
    with PairLoader(corpus, 2, device="cpu", seed=2, config=config) as loader:
        with pytest.warns(RuntimeWarning, match="clip2.webm"):
            batches = list(loader)
        assert len(batches) == len(loader)
        assert list(loader.stats.failed_files) == [fifo]
        assert "sample_timeout" in loader.stats.failed_files[fifo]
        assert loader.stats.timeouts == 1 and loader.stats.worker_restarts == 1
        assert fifo not in served_files(loader, batches)
        # a later epoch does not wait on it again
        started = time.monotonic()
        assert len(list(loader)) == len(loader) and time.monotonic() - started < config.sample_timeout
        assert loader.stats.timeouts == 1


def test_worker_killed_mid_sample_is_restarted_and_the_sample_replaced(corpus):
    fifo = str(Path(corpus).parent / "clip4.webm")
    os.unlink(fifo)
    os.mkfifo(fifo)  # holds its worker until the test kills it
    config = dataclasses.replace(CONFIG, sample_timeout=60.0, prefetch=1)
    with PairLoader(corpus, 2, device="cpu", seed=5, config=config) as loader:
        killer = threading.Timer(4.0, lambda: [os.kill(pid, signal.SIGKILL)
                                               for pid in loader.host.decode_worker_pids])
        killer.start()
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = list(loader)
        killer.join()
        assert time.monotonic() - started < 30  # not the 60 s timeout: the death was noticed
        assert len(batches) == len(loader)
        assert [str(w.message) for w in caught if "clip4" in str(w.message)][0].count("died") == 1
        assert list(loader.stats.failed_files) == [fifo]
        assert loader.stats.worker_restarts == 1 and loader.stats.timeouts == 0
        assert fifo not in served_files(loader, batches)


def test_idle_worker_killed_between_batches_loses_nothing(corpus):
    with PairLoader(corpus, 2, device="cpu", seed=7, config=CONFIG) as loader:
        iterator = iter(loader)
        first = next(iterator)
        time.sleep(0.5)  # the host has prepared what it may; the worker waits for the next chunk
        for pid in loader.host.decode_worker_pids:
            os.kill(pid, signal.SIGKILL)
        rest = list(iterator)
        assert 1 + len(rest) == len(loader)
        assert not loader.stats.failed_files and loader.stats.replaced == 0
        batches = [first, *rest]
    with PairLoader(corpus, 2, device="cpu", seed=7, config=CONFIG) as undisturbed:
        for batch, expected in zip(batches, undisturbed):
            np.testing.assert_array_equal(batch["frame_indices"], expected["frame_indices"])
            np.testing.assert_array_equal(batch["sample_ids"], expected["sample_ids"])


def test_corpus_smaller_than_a_batch_repeats_clips_with_new_views(corpus):
    config = dataclasses.replace(CONFIG, decode_workers=0)
    with pytest.warns(RuntimeWarning, match=r"each clip appears about 2\.7 times per batch"):
        loader = PairLoader(corpus, 16, device="cpu", seed=4, config=config)
    with loader:
        (batch,) = list(loader)
        assert len(loader) == 1 and loader.stats.replaced == 0
        ids = batch["sample_ids"]
        assert sorted(set(ids.tolist())) == list(range(6))  # every clip, repeated
        params = [(int(i), tuple(f), tuple(c.ravel())) for i, f, c in zip(ids, batch["frame_indices"], batch["crops"])]
        assert len(set(params)) == 16  # each repeat has its own frames and crops
        with pytest.warns(RuntimeWarning, match="times per batch"):
            again = next(iter(PairLoader(corpus, 16, device="cpu", seed=4, config=config)))
        np.testing.assert_array_equal(again["frame_indices"], batch["frame_indices"])
        second_epoch = next(iter(loader))
        assert not np.array_equal(second_epoch["sample_ids"], ids)


def test_small_corpus_over_ranks_is_a_pure_function_of_the_position(corpus):
    from vito_fast.data.sample_order import SampleOrder

    ranks = [SampleOrder(6, 4, seed=9, rank=rank, world_size=3) for rank in range(3)]
    clips = [order.epoch(2) for order in ranks]
    stream = np.concatenate([np.random.default_rng((9, 2, 0x5045524D)).permutation(6),
                             np.random.default_rng((9, 2, 0x5045524D, 1)).permutation(6)])
    np.testing.assert_array_equal(np.concatenate([c for c, _ in clips]), stream)
    np.testing.assert_array_equal(np.concatenate([r for _, r in clips]), np.repeat([0, 1], 6))
    ids = np.concatenate([order.sampler_ids(c, r, np.zeros_like(c)) for order, (c, r) in zip(ranks, clips)])
    assert len(set(ids.tolist())) == 12  # a repeat is a new sample
    big = SampleOrder(100, 8, seed=9, rank=1, world_size=3)
    assert big.steps == 33 // 8 and big.repeats_per_batch == 1.0
    np.testing.assert_array_equal(big.epoch(0)[0], np.random.default_rng((9, 0, 0x5045524D)).permutation(100)[33:65])


def test_shard_truncated_while_open_is_replaced_not_a_crash(corpus, tmp_path):
    """The v1 store mapped its shards: a shard cut short while mapped killed the trainer (SIGBUS)."""
    from vito_fast.data import FrameStore
    from vito_fast.prepare.frame_store_write import extract_frames

    extract_frames(corpus, tmp_path / "store", fps=10, quality=80, workers=1, progress=False, shard_bytes=1)
    config = dataclasses.replace(CONFIG, prefetch=1)
    with PairLoader(str(tmp_path / "store"), 1, device="cpu", seed=3, config=config) as loader:
        victim_clip = int(loader.epoch_clips(0)[-1])  # shown last: read long after the shards are open
        with FrameStore(tmp_path / "store") as store:
            victim = store.shard_path(victim_clip)
        iterator = iter(loader)
        first = next(iterator)
        with open(victim, "r+b") as handle:
            handle.truncate(victim.stat().st_size // 3)
        with pytest.warns(RuntimeWarning, match=Path(victim).name):
            rest = list(iterator)
        assert 1 + len(rest) == len(loader) == 6
        (name,) = loader.stats.failed_files
        assert str(victim) in name and loader.stats.replaced == 1
        assert victim_clip not in {int(clip) for batch in (first, *rest) for clip in batch["sample_ids"]}


@pytest.mark.cuda
def test_gpu_loader_pins_its_arenas_and_matches_the_cpu(everyday):
    with PairLoader(everyday, 4, device="gpu", seed=0, config=CONFIG) as gpu:
        gpu_batch = next(iter(gpu))
        assert gpu.host.arenas_pinned
    with PairLoader(everyday, 4, device="cpu", seed=0, config=CONFIG) as cpu:
        cpu_batch = next(iter(cpu))
    np.testing.assert_array_equal(gpu_batch["frame_indices"], cpu_batch["frame_indices"])
    np.testing.assert_array_equal(shown_frames(gpu_batch["view1"].cpu()), cpu_batch["frame_indices"][:, 0])
