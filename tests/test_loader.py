"""PairLoader on tiny generated clips whose pixels encode (frame, x, y), on the CPU (GPU: cuda-marked).

Frame f of every clip: red rises from 0 (left) to 255 (right), green from 0 (top) to 255
(bottom), blue is 16 + 8 f everywhere. So a view's blue says which frame it shows and, away from
the borders, its red and green say which source pixel each output pixel came from: a resize of
a linear ramp is the same ramp, whatever the filter.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vito_fast.data import FrameStore, LoaderConfig, PairLoader, ViewConfig, sample_view_params
from vito_fast.data.augment import IMAGENET_MEAN, IMAGENET_STD, LUMA, colour_matrices, reference_view, view_blur_window
from vito_fast.prepare.frame_store_write import extract_frames
from vito_fast.data.manifest import ClipRecord, write_manifest

av = pytest.importorskip("av", reason="PyAV is not installed: the test clips are written with it")
from conftest import HAVE_DALI, needs_dali  # noqa: E402

WIDTH, HEIGHT, FPS, NUM_FRAMES, NUM_CLIPS, SIZE = 64, 48, 10.0, 30, 8, 32
NO_COLOUR = dict(jitter_probability=(0.0, 0.0), grayscale_probability=(0.0, 0.0),
                 blur_probability=(0.0, 0.0), solarize_probability=(0.0, 0.0))
PLAIN = LoaderConfig(image_size=SIZE, dtype="float32", num_threads=2, views=ViewConfig(**NO_COLOUR), backend="dali")


def write_xy_video(path: Path, num_frames: int = NUM_FRAMES) -> Path:
    """VP9 clip: red = x ramp, green = y ramp, blue = 16 + 8 * frame (keyframe every 8 frames)."""
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[..., 0] = np.round(np.linspace(0, 255, WIDTH))[None, :]
    image[..., 1] = np.round(np.linspace(0, 255, HEIGHT))[:, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=int(FPS),
                                      options={"deadline": "realtime", "cpu-used": "8", "crf": "4", "b": "0"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv444p"
        stream.codec_context.gop_size = 8
        for frame_number in range(num_frames):
            image[..., 2] = 16 + 8 * frame_number
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv444p")
            frame.pts = frame_number
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_clips(folder: Path, corrupt: int = -1) -> Path:
    records = []
    for clip in range(NUM_CLIPS):
        path = write_xy_video(folder / f"clip{clip}.webm")
        if clip == corrupt:
            data = path.read_bytes()
            path.write_bytes(data[:200])  # the header survives, the frames do not
        records.append(ClipRecord(str(path), NUM_FRAMES, FPS, WIDTH, HEIGHT, "vp9", NUM_FRAMES / FPS,
                                  label=f"class{clip % 3}"))
    return write_manifest(folder / "manifest.jsonl", records)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loader")
    manifest = write_clips(folder)
    # one shard per clip, so that a missing shard takes one clip away
    extract_frames(manifest, folder / "store", fps=FPS, quality=98, workers=1, progress=False, shard_bytes=1)
    return {"video": str(manifest), "store": str(folder / "store")}


@pytest.fixture(params=["dali", "torch"])
def backend(request) -> str:
    """Each device stage in turn: the contract and the fault handling are the loader's, not DALI's."""
    if request.param == "dali" and not HAVE_DALI:
        pytest.skip("NVIDIA DALI is not installed")
    return request.param


def pixels(view: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) normalised view -> (B, S, S, 3) float64 on the 0..255 scale."""
    hwc = view.float().permute(0, 2, 3, 1).numpy().astype(np.float64)
    return (hwc * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0


def epoch_batches(loader):
    return [batch for batch in loader]


@pytest.mark.parametrize("kind", ["store", "video"])
def test_each_view_is_the_requested_frame_crop_flip_and_resize(sources, kind, backend):
    loader = PairLoader(sources[kind], 4, device="cpu", seed=3, config=replace(PLAIN, backend=backend))
    batches = epoch_batches(loader)
    assert len(batches) == len(loader) == 2
    flips_seen = set()
    for batch in batches:
        for view in (0, 1):
            image = pixels(batch[f"view{view + 1}"])
            for row in range(4):
                frame = batch["frame_indices"][row, view]
                top, left, height, width = batch["crops"][row, view]
                # which frame: blue is 16 + 8 frame (neighbours are 8 levels away)
                assert abs(image[row, ..., 2].mean() - (16 + 8 * frame)) < 2.5, (kind, row, view, frame)
                # which pixels: output pixel centre j maps to source x = left + (j + 0.5) w / S - 0.5
                params = sample_view_params(batch["sample_ids"][row:row + 1], NUM_FRAMES, FPS, (HEIGHT, WIDTH),
                                            seed=3, epoch=0, config=PLAIN.views)
                flipped = bool(params.flips[0, view])
                flips_seen.add(flipped)
                columns = np.arange(SIZE)
                source_x = left + (columns + 0.5) * width / SIZE - 0.5
                source_y = top + (columns + 0.5) * height / SIZE - 0.5
                expected_red = np.clip(source_x, 0, WIDTH - 1) * 255 / (WIDTH - 1)
                expected_green = np.clip(source_y, 0, HEIGHT - 1) * 255 / (HEIGHT - 1)
                if flipped:
                    expected_red = expected_red[::-1]
                inner = slice(3, SIZE - 3)  # border pixels see the filter clamped at the crop's edge
                red = image[row, inner, inner, 0].mean(axis=0)
                green = image[row, inner, inner, 1].mean(axis=1)
                assert np.abs(red - expected_red[inner]).max() < 2.5, (kind, row, view)
                assert np.abs(green - expected_green[inner]).max() < 2.5, (kind, row, view)
    assert flips_seen == {False, True}  # both branches of the flip were exercised


OP_CONFIGS = {
    "jitter": dict(jitter_probability=(1.0, 1.0)),
    "grayscale": dict(grayscale_probability=(1.0, 1.0)),
    "jitter+grayscale": dict(jitter_probability=(1.0, 1.0), grayscale_probability=(0.0, 1.0)),
    "blur": dict(blur_probability=(1.0, 1.0), blur_sigma=(0.5, 2.0)),
    "solarize": dict(solarize_probability=(1.0, 1.0)),
}


@pytest.mark.parametrize("op", sorted(OP_CONFIGS))
def test_colour_ops_match_the_numpy_reference(sources, op, backend):
    views = ViewConfig(**{**NO_COLOUR, **OP_CONFIGS[op]})
    config = LoaderConfig(image_size=SIZE, dtype="float32", num_threads=2, views=views, backend=backend)
    plain = next(iter(PairLoader(sources["store"], 4, device="cpu", seed=5, config=replace(PLAIN, backend=backend))))
    augmented = next(iter(PairLoader(sources["store"], 4, device="cpu", seed=5, config=config)))
    np.testing.assert_array_equal(plain["crops"], augmented["crops"])  # same geometry, only the op differs
    params = sample_view_params(augmented["sample_ids"], NUM_FRAMES, FPS, (HEIGHT, WIDTH), seed=5, epoch=0,
                                config=views)
    window = view_blur_window(SIZE)
    for view in (0, 1):
        # the plain view holds the uint8 resize exactly: round away the float32 normalisation error
        before, after = np.round(pixels(plain[f"view{view + 1}"])), pixels(augmented[f"view{view + 1}"])
        colours = colour_matrices(params, view)
        changed = 0
        for row in range(4):
            expected = reference_view(before[row], colours[row], float(params.blur_sigma[row, view]),
                                      bool(params.solarize[row, view]), False, window)
            expected = (expected * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0
            np.testing.assert_allclose(after[row], expected, atol=0.05, err_msg=f"{op} view {view} row {row}")
            changed += np.abs(after[row] - before[row]).max() > 4
        assert changed >= 3, f"{op}: the op left view {view} (nearly) unchanged"


def test_colour_matrix_definitions():
    params = sample_view_params(np.arange(16), NUM_FRAMES, FPS, (HEIGHT, WIDTH), seed=0, epoch=0,
                                config=ViewConfig(jitter_probability=(1.0, 0.0), grayscale_probability=(0.0, 1.0)))
    rgb1 = np.array([200.0, 40.0, 90.0, 1.0])
    grey = LUMA @ rgb1[:3]
    greyscale_only = colour_matrices(params, 1)  # recipe 2 here: grayscale always, jitter never
    np.testing.assert_allclose(greyscale_only @ rgb1, np.full((16, 3), grey), rtol=1e-6)
    expected = {0: lambda x, f: f * x, 1: lambda x, f: f * x + (1 - f) * 128,
                2: lambda x, f: f * x + (1 - f) * (LUMA @ x)}
    for op, name in enumerate(("brightness", "contrast", "saturation")):
        factor = float(getattr(params, name)[0, 0])
        np.testing.assert_allclose(colour_matrices(one_op(params, 0, op), 0)[0] @ rgb1,
                                   expected[op](rgb1[:3], factor), rtol=1e-5, err_msg=name)
    hue_turned = colour_matrices(one_op(params, 0, 3), 0)[0] @ rgb1
    assert abs(LUMA @ hue_turned - grey) < 1e-3 and np.abs(hue_turned - rgb1[:3]).max() > 1  # luma kept
    # the order matters and is the sampled one: brightness then contrast != contrast then brightness
    both = one_op(params, 0, 0)
    both.contrast[:] = 0.5
    both.jitter_order[:] = (0, 1, 2, 3)
    first = colour_matrices(both, 0)[0] @ rgb1
    both.jitter_order[:] = (1, 0, 2, 3)
    assert np.abs(colour_matrices(both, 0)[0] @ rgb1 - first).max() > 1


def test_truncated_blur_window_matches_the_full_kernel():
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.float64)
    identity = np.eye(3, 4)
    for sigma in (0.1, 0.7, 1.3, 2.0):
        truncated = reference_view(image, identity, sigma, False, False, view_blur_window(224))
        levels = (truncated * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255
        assert np.abs(levels - _blur_full(image, sigma)).max() < 0.03, sigma  # under 0.03 of a level


def _blur_full(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with BYOL's full 23-tap window (mirrored borders), independent of augment.py."""
    taps = np.exp(-0.5 * (np.arange(-11, 12) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, ((11, 11), (11, 11), (0, 0)), mode="reflect")
    rows = sum(tap * padded[k:k + image.shape[0]] for k, tap in enumerate(taps))
    return sum(tap * rows[:, k:k + image.shape[1]] for k, tap in enumerate(taps))


def one_op(params, row: int, op: int):
    """Sample ``row`` of ``params`` with jitter reduced to the single op ``op`` (0 brightness, 1 contrast,
    2 saturation, 3 hue; the others identity) and no grayscale."""
    from vito_fast.data.sampler import ViewParams

    one = ViewParams(**{name: value[row:row + 1].copy() for name, value in params.to_dict().items()})
    identities = (("brightness", 0, 1.0), ("contrast", 1, 1.0), ("saturation", 2, 1.0), ("hue", 3, 0.0))
    for name, index, identity in identities:
        if index != op:
            getattr(one, name)[:] = identity
    one.jitter_applied[:] = True
    one.grayscale[:] = False
    return one


@pytest.mark.parametrize("dtype, torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_batch_contract_shapes_dtypes_channels_last(sources, dtype, torch_dtype, backend):
    config = LoaderConfig(image_size=SIZE, dtype=dtype, num_threads=2, backend=backend)
    loader = PairLoader(sources["store"], 4, device="cpu", seed=1, config=config)
    batch = next(iter(loader))
    for name in ("view1", "view2"):
        view = batch[name]
        assert view.shape == (4, 3, SIZE, SIZE) and view.dtype == torch_dtype and view.device.type == "cpu"
        assert view.is_contiguous(memory_format=torch.channels_last) and view.stride()[1] == 1
        assert -2.2 < float(view.float().min()) and float(view.float().max()) < 2.7  # ImageNet-normalised
    assert batch["sample_ids"].dtype == np.int64 and batch["sample_ids"].shape == (4,)
    assert batch["frame_indices"].shape == (4, 2) and batch["crops"].shape == (4, 2, 4)
    assert batch["labels"].dtype == np.int64
    expected_labels = [loader.classes.index(f"class{clip % 3}") for clip in batch["sample_ids"]]
    np.testing.assert_array_equal(batch["labels"], expected_labels)
    assert loader.stats.samples == 4 and loader.stats.replaced == 0


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for one, other in zip(first, second):
        for name in ("view1", "view2"):
            assert torch.equal(one[name], other[name])
        for name in ("sample_ids", "frame_indices", "crops", "labels"):
            np.testing.assert_array_equal(one[name], other[name])


@pytest.mark.parametrize("kind", ["store", "video"])
def test_deterministic_and_resumes_at_start_step(sources, kind, backend):
    config = LoaderConfig(image_size=SIZE, dtype="float16", num_threads=2, backend=backend)
    full = epoch_batches(PairLoader(sources[kind], 2, device="cpu", seed=9, epoch=1, config=config))
    assert len(full) == 4
    assert_same_batches(full, epoch_batches(PairLoader(sources[kind], 2, device="cpu", seed=9, epoch=1, config=config)))
    assert_same_batches(full[2:], epoch_batches(PairLoader(sources[kind], 2, device="cpu", seed=9, epoch=1,
                                                           start_step=2, config=config)))
    # a checkpointed position: state after batch 0 continues with batch 1
    loader = PairLoader(sources[kind], 2, device="cpu", seed=9, epoch=1, config=config)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["step"] == 1
    resumed = PairLoader(sources[kind], 2, device="cpu", seed=9, config=config)
    resumed.load_state_dict(state)
    assert_same_batches(full[1:], epoch_batches(resumed))
    # a new iter() mid-epoch closes the old one and continues from the position (step 1 here)
    assert_same_batches(full[1:], epoch_batches(loader))
    other = next(iter(PairLoader(sources[kind], 2, device="cpu", seed=10, epoch=1, config=config)))
    assert not torch.equal(other["view1"], full[0]["view1"])


def test_two_ranks_are_disjoint_and_cover_the_epoch(sources, backend):
    config = replace(PLAIN, backend=backend)
    ranks = [PairLoader(sources["store"], 2, device="cpu", seed=4, epoch=2, rank=rank, world_size=2, config=config)
             for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    seen = [np.concatenate([batch["sample_ids"] for batch in loader]) for loader in ranks]
    np.testing.assert_array_equal(seen[0], ranks[0].epoch_clips(2))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen)) == list(range(NUM_CLIPS))
    assert not np.array_equal(ranks[0].epoch_clips(2), ranks[0].epoch_clips(3))  # a new order per epoch
    odd = PairLoader(sources["store"], 1, device="cpu", seed=4, rank=2, world_size=3, config=config)
    assert len(odd) == NUM_CLIPS // 3  # the remainder is dropped, every rank equally long


@pytest.mark.parametrize("decoder, backend", [("pyav", "dali"), ("dali", "dali"), ("pyav", "torch")])
def test_corrupt_video_is_replaced_and_reported(tmp_path, decoder, backend):
    if backend == "dali" and not HAVE_DALI:
        pytest.skip("NVIDIA DALI is not installed")
    manifest = write_clips(tmp_path, corrupt=5)
    config = LoaderConfig(image_size=SIZE, dtype="float32", num_threads=2, views=PLAIN.views, video_decoder=decoder,
                          backend=backend)
    loader = PairLoader(str(manifest), 4, device="cpu", seed=0, config=config)
    with pytest.warns(RuntimeWarning, match="clip5.webm"):
        batches = epoch_batches(loader)
    served = np.concatenate([batch["sample_ids"] for batch in batches])
    assert len(served) == NUM_CLIPS and 5 not in served
    assert list(loader.stats.failed_files) == [str(tmp_path / "clip5.webm")]
    assert loader.stats.replaced == 1 and loader.stats.samples == NUM_CLIPS
    again = PairLoader(str(manifest), 4, device="cpu", seed=0, config=config)
    with pytest.warns(RuntimeWarning):
        assert_same_batches(batches, epoch_batches(again))  # the replacement is deterministic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = PairLoader(str(manifest), 4, device="cpu", seed=0, start_step=1, config=config)
        assert_same_batches(batches[1:], epoch_batches(resumed))


def test_corrupt_jpeg_in_store_is_replaced_and_reported(sources, tmp_path, backend):
    store_dir = tmp_path / "store"
    shutil.copytree(sources["store"], store_dir)
    store = FrameStore(store_dir)
    bad_clip = 2
    shard = store_dir / store.shards[store.clip(bad_clip).shard]["name"]
    data = bytearray(shard.read_bytes())
    for offset in store.frame_offsets(bad_clip):  # keep the JPEG markers, break the headers after them
        data[int(offset) + 2: int(offset) + 120] = bytes(118)
    store.close()
    shard.write_bytes(bytes(data))
    loader = PairLoader(str(store_dir), 4, device="cpu", seed=0, config=replace(PLAIN, backend=backend))
    with pytest.warns(RuntimeWarning, match="clip 2"):
        batches = epoch_batches(loader)
    served = np.concatenate([batch["sample_ids"] for batch in batches])
    assert len(served) == NUM_CLIPS and bad_clip not in served
    assert len(loader.stats.failed_files) == 1 and loader.stats.replaced == 1


def test_missing_store_shard_is_replaced_and_reported(sources, tmp_path, backend):
    store_dir = tmp_path / "store"
    shutil.copytree(sources["store"], store_dir)
    with FrameStore(store_dir) as store:
        assert len(store.shards) == NUM_CLIPS
        missing = store_dir / store.shards[store.clip(6).shard]["name"]
    missing.unlink()
    loader = PairLoader(str(store_dir), 4, device="cpu", seed=0, config=replace(PLAIN, backend=backend))
    with pytest.warns(RuntimeWarning, match=missing.name):
        served = np.concatenate([batch["sample_ids"] for batch in loader])
    assert len(served) == NUM_CLIPS and 6 not in served and loader.stats.replaced == 1


@needs_dali
def test_dali_video_decoder_gives_the_same_frames(sources):
    config = LoaderConfig(image_size=SIZE, dtype="float32", num_threads=2, views=PLAIN.views, video_decoder="dali")
    dali = next(iter(PairLoader(sources["video"], 4, device="cpu", seed=2, config=config)))
    pyav = next(iter(PairLoader(sources["video"], 4, device="cpu", seed=2, config=PLAIN)))
    np.testing.assert_array_equal(dali["frame_indices"], pyav["frame_indices"])
    for name in ("view1", "view2"):  # two YUV->RGB conversions of the same decoded frames
        assert np.abs(pixels(dali[name]) - pixels(pyav[name])).mean() < 3


def test_import_does_not_load_dali():
    code = "import sys, vito_fast, vito_fast.data; assert 'nvidia.dali' not in sys.modules, 'DALI imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


HIDE_DALI = """
import importlib.abc, sys


class HideDali(importlib.abc.MetaPathFinder):  # a machine without DALI: importing it fails as if not installed
    def find_spec(self, name, path=None, target=None):
        if name == "nvidia.dali" or name.startswith("nvidia.dali."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, HideDali())
"""


def test_without_dali_the_torch_backend_loads_and_trains(sources, tmp_path):
    """A machine without DALI: ``import vito_fast``, the loader on "auto" and a pretraining run all work
    (torch backend, said once on stderr); asking for DALI by name fails with how to install it."""
    code = HIDE_DALI + """
import vito_fast, vito_fast.data
from vito_fast.data import LoaderConfig, PairLoader

store, video, run = sys.argv[1:4]
config = LoaderConfig(image_size=32, dtype="float32", num_threads=2, decode_workers=0)
for source in (store, video):
    with PairLoader(source, 4, device="cpu", seed=0, config=config) as loader:
        batch = next(iter(loader))
        assert loader.backend.name == "torch" and "DALI is not installed" in loader.backend.reason, loader.backend
        assert batch["view1"].shape == (4, 3, 32, 32) and batch["view2"].isfinite().all()
for bad, expected in (({"backend": "dali"}, "pip install nvidia-dali"), ({"video_decoder": "dali"}, "needs DALI")):
    try:
        PairLoader(video, 4, device="cpu", seed=0, config=LoaderConfig(**bad))
    except (ImportError, RuntimeError) as error:
        assert expected in str(error), error
    else:
        raise AssertionError(f"{bad} without DALI did not fail")
from vito_fast.cli import pretrain
assert pretrain.main(["--preset", "demo", "--data", store, "--out", run, "--steps", "2", "data.image_size=32",
                      "data.batch_size=4", "data.decode_workers=0", "model.pool_hidden=16", "model.proj_hidden=32",
                      "model.proj_dim=16", "model.pred_hidden=32", "train.progress=false", "train.device=cpu"]) == 0
assert not [name for name in sys.modules if name.startswith("nvidia.dali")]
"""
    result = subprocess.run([sys.executable, "-c", code, sources["store"], sources["video"], str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stderr.count("data backend auto -> torch: DALI is not installed") == 1, result.stderr[-2000:]
    assert (tmp_path / "run").is_dir()


@needs_dali
def test_auto_picks_dali_where_it_works_and_says_so(sources):
    with PairLoader(sources["store"], 4, device="cpu", seed=0, config=replace(PLAIN, backend="auto")) as loader:
        assert loader.backend.name == "dali" and loader.backend.reason.startswith("DALI works"), loader.backend
        assert "auto -> dali" in loader.backend.describe()
    with PairLoader(sources["store"], 4, device="cpu", seed=0, config=replace(PLAIN, backend="torch")) as loader:
        assert loader.backend.name == "torch" and loader.backend.reason == "asked for"
    with pytest.raises(ValueError, match="backend"):
        LoaderConfig(backend="opencv")


@needs_dali
def test_missing_dali_fails_clearly(sources, monkeypatch):
    for name in [name for name in sys.modules if name.startswith("nvidia.dali")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: "import" raises ImportError
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(ImportError, match="pip install nvidia-dali"):  # asked for by name: no fallback
        PairLoader(sources["store"], 4, device="cpu", seed=0, config=replace(PLAIN, backend="dali"))


def test_gpu_without_cuda_fails_clearly(sources):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        PairLoader(sources["store"], 4, device="gpu", seed=0, config=PLAIN)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["store", "video"])
def test_gpu_views_match_the_cpu_views(sources, kind, backend):
    config = LoaderConfig(image_size=SIZE, dtype="bfloat16", num_threads=2, backend=backend)
    gpu = next(iter(PairLoader(sources[kind], 4, device="gpu", seed=6, config=config)))
    cpu = next(iter(PairLoader(sources[kind], 4, device="cpu", seed=6, config=config)))
    for name in ("view1", "view2"):
        view = gpu[name]
        assert view.is_cuda and view.dtype == torch.bfloat16
        assert view.is_contiguous(memory_format=torch.channels_last)
        # nvJPEG vs libjpeg-turbo and GPU vs CPU resampling: a few levels of 255 apart at most
        assert (view.float().cpu() - cpu[name].float()).abs().mean() < 0.05
    np.testing.assert_array_equal(gpu["crops"], cpu["crops"])


# Pinned before the loader was split into parts (order, source, host, device stage, producer):
# a seeded batch must not change with how the code is arranged. Positions and crops exactly,
# the views' sums (DALI's CPU resize) to float tolerance.
PINNED_POSITIONS = "f51d609827408749"
PINNED_VIEWS = {"store": ((4723.98, 3612.368), (14151.001, 13345.878)),
                "video": ((4726.279, 3614.168), (14154.606, 13342.737))}


@needs_dali
@pytest.mark.parametrize("kind,workers", [("store", 0), ("video", 0), ("video", 1)])
def test_seeded_batch_matches_its_pinned_checksum(sources, kind, workers):
    import hashlib

    config = LoaderConfig(image_size=SIZE, dtype="float32", num_threads=2, decode_workers=workers, backend="dali")
    with PairLoader(sources[kind], 4, device="cpu", seed=11, epoch=1, config=config) as loader:
        batch = next(iter(loader))
    digest = hashlib.sha256()
    for name in ("sample_ids", "frame_indices", "crops", "labels"):
        digest.update(np.ascontiguousarray(batch[name]).tobytes())
    assert digest.hexdigest()[:16] == PINNED_POSITIONS
    views = [batch[name].double() for name in ("view1", "view2")]
    sums, squares = PINNED_VIEWS[kind]
    np.testing.assert_allclose([float(view.sum()) for view in views], sums, rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose([float((view * view).sum()) for view in views], squares, rtol=1e-5, atol=1e-2)


def test_a_loader_dropped_without_close_stops_its_threads(sources, backend):
    import gc
    import threading
    import time

    loader = PairLoader(sources["video"], 2, device="cpu", seed=1,
                        config=LoaderConfig(image_size=SIZE, dtype="float32", num_threads=2, decode_workers=1,
                                            backend=backend))
    next(iter(loader))
    assert loader.host.decode_worker_pids
    del loader
    gc.collect()  # the loader and its generator form a cycle
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(thread.name.startswith(("vito-dali", "vito-prepare"))
                                              for thread in threading.enumerate()):
        time.sleep(0.05)
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith(("vito-dali", "vito-prepare"))]


class RecordingStage:
    """A DeviceStage without DALI: its views are the frame indices, so a test sees what it was fed."""

    depth = 2

    def __init__(self, host):
        from collections import deque

        self.host, self.in_flight, self.closed = host, deque(), False

    def held(self) -> int:
        return len(self.in_flight)

    def filling(self) -> bool:
        return False

    def submit(self, batch) -> None:
        assert all(sample is not None for sample in batch.inputs)  # the host read every sample
        self.in_flight.append(batch)

    def take(self):
        from vito_fast.data.device_stage import DeviceOutput

        batch = self.in_flight.popleft()
        views = tuple(torch.from_numpy(batch.params.frame_indices[:, view].copy()) for view in (0, 1))
        self.host.release(batch)
        return DeviceOutput(batch, views)

    def drain(self) -> None:
        while self.in_flight:
            self.host.release(self.in_flight.popleft())

    def hand_over(self, output) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("kind", ["store", "video"])
def test_another_device_stage_plugs_into_the_same_host_and_producer(sources, kind):
    """The seam the next backends use: host preparation and producer drive any DeviceStage."""
    import inspect

    from vito_fast.data.dali_stage import DaliStage
    from vito_fast.data.device_stage import DeviceStage
    from vito_fast.data.torch_stage import TorchStage
    from vito_fast.data.host import HostPreparation
    from vito_fast.data.pair_sources import open_source
    from vito_fast.data.producer import Producer
    from vito_fast.data.sample_order import SampleOrder
    from vito_fast.data.stats import LoaderStats

    def parameters(cls, name):
        return list(inspect.signature(getattr(cls, name)).parameters)

    for name in ("held", "filling", "submit", "take", "drain", "hand_over", "close"):
        assert (parameters(DaliStage, name) == parameters(TorchStage, name) == parameters(RecordingStage, name)
                == parameters(DeviceStage, name)), name
    config = LoaderConfig(image_size=SIZE, dtype="float32", num_threads=2, decode_workers=0)
    with PairLoader(sources[kind], 2, device="cpu", seed=6, config=config) as loader:
        expected = epoch_batches(loader)
    source = open_source(sources[kind])
    stats = LoaderStats()
    host = HostPreparation(source, SampleOrder(len(source), 2, seed=6), config, seed=6, pinned=False, stats=stats)
    stage = RecordingStage(host)
    producer = Producer(host, stage, 0, 0, steps_per_epoch=len(expected), stats=stats)
    try:
        for step, reference in enumerate(expected):
            batch, replaced, output = producer.take()
            assert replaced == 0 and output.batch.step == step
            for name in ("sample_ids", "frame_indices", "crops", "labels"):
                np.testing.assert_array_equal(batch[name], reference[name])
            np.testing.assert_array_equal(batch["view2"].numpy(), reference["frame_indices"][:, 1])
    finally:
        producer.close()
        host.close()


def test_a_collected_loader_never_waits_on_the_collecting_thread(sources):
    """The garbage collector may run a loader's finalizer on any thread, one that holds a lock the
    producer needs to stop (a ThreadPoolExecutor's global lock did): closing without waiting returns
    at once, and the producer's thread frees the rest as it ends."""
    import threading
    import time

    from vito_fast.data.host import HostPreparation
    from vito_fast.data.pair_sources import open_source
    from vito_fast.data.producer import Producer
    from vito_fast.data.sample_order import SampleOrder
    from vito_fast.data.stats import LoaderStats

    release = threading.Event()

    class BlockedStage(RecordingStage):
        def submit(self, batch) -> None:
            release.wait(30)  # the producer's thread is stuck until the test lets it go
            super().submit(batch)

    config = LoaderConfig(image_size=SIZE, dtype="float32", num_threads=2, decode_workers=0)
    source, stats = open_source(sources["store"]), LoaderStats()
    host = HostPreparation(source, SampleOrder(len(source), 2, seed=1), config, seed=1, pinned=False, stats=stats)
    producer = Producer(host, BlockedStage(host), 0, 0, steps_per_epoch=4, stats=stats)
    freed = threading.Event()
    started = time.monotonic()
    producer.close(wait=False, then=freed.set)
    assert time.monotonic() - started < 1.0 and not freed.is_set()
    release.set()
    assert freed.wait(10), "the producer's thread did not free the loader as it ended"
    host.close()
    late = threading.Event()
    producer.close(wait=False, then=late.set)  # after the thread ended: runs at once
    assert late.is_set()


@pytest.mark.parametrize("kind", ["store", "video"])
def test_both_sources_offer_what_pair_source_names(sources, kind):
    import inspect

    from vito_fast.data.pair_sources import PairSource, open_source

    source = open_source(sources[kind])
    for name in ("input_kind", "num_frames", "fps", "frame_hw", "labels", "classes"):
        assert hasattr(source, name), name
    for name in ("__len__", "name", "read", "verify"):
        assert (list(inspect.signature(getattr(type(source), name)).parameters)
                == list(inspect.signature(getattr(PairSource, name)).parameters)), name
    assert len(source) == NUM_CLIPS and source.input_kind == {"store": "jpeg", "video": "frames"}[kind]
