"""Evaluations on tiny inputs with known answers: kNN, linear probe, propagation, robustness, viz."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vito_fast.eval.encoder import EvalEncoder, load_encoder
from vito_fast.eval.features import (LabelledImages, extract_feature_maps, extract_features, load_image_folder,
                                     load_manifest_frames, split_by_group, group_folds)
from vito_fast.eval.knn import knn_accuracy, knn_predict
from vito_fast.eval.linear import linear_probe_accuracy, train_linear_probe
from vito_fast.eval.propagate import propagate_labels, region_similarity
from vito_fast.eval.robustness import CORRUPTIONS, corrupt, robustness_evaluation
from vito_fast.eval.viz import (RATIO_RANGE, attention_mask_iou, attention_panel, centred_gaussian_attention,
                                colour_bar, overlay_attention, save_gif, save_png, upsample_attention)


def clustered_features(num_classes: int, per_class: int, dim: int, spread: float) -> tuple:
    """Features around one random unit centre per class: (N, dim), labels (N,)."""
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim), dim=1) * 4
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim), labels


# ----------------------------------------------------------------------------- kNN


def test_knn_separable_classes_give_full_accuracy():
    features, labels = clustered_features(5, 13, 17, spread=0.05)
    test_features, test_labels = features[1::2], labels[1::2]
    assert knn_accuracy(features[::2], labels[::2], test_features, test_labels, k=7) == 1.0


def test_knn_temperature_weights_the_votes():
    """Two far neighbours of class 0 against one near neighbour of class 1."""
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])  # class 1 at angle 0, class 0 at ±53°
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.05]])
    sharp = knn_predict(train, labels, query, k=3, temperature=0.05)
    flat = knn_predict(train, labels, query, k=3, temperature=100.0)
    assert sharp.argmax().item() == 1  # the nearest neighbour dominates
    assert flat.argmax().item() == 0  # a plain majority
    assert knn_predict(train, labels, query, k=1).argmax().item() == 1


def test_knn_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="columns"):
        knn_predict(torch.randn(4, 3), torch.zeros(4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="labels"):
        knn_predict(torch.randn(4, 3), torch.zeros(3), torch.randn(2, 3))


# ----------------------------------------------------------------------------- linear probe


@pytest.mark.parametrize("method", ["lbfgs", "sgd"])
def test_linear_probe_separable_classes_give_full_accuracy(method):
    features, labels = clustered_features(4, 20, 9, spread=0.3)
    accuracy = linear_probe_accuracy(features[::2], labels[::2], features[1::2], labels[1::2], method=method,
                                     epochs=30, batch_size=16)
    assert accuracy == 1.0


def test_linear_probe_finds_a_direction_that_knn_misses():
    """The label is the sign of one coordinate hidden among large noise: linear 100%, cosine kNN near chance."""
    features = torch.randn(400, 16) * 5
    features[:, 0] = torch.where(torch.rand(400) < 0.5, -0.5, 0.5) + 0.05 * torch.randn(400)
    labels = (features[:, 0] > 0).long()
    train, test = slice(0, 300), slice(300, 400)
    assert linear_probe_accuracy(features[train], labels[train], features[test], labels[test]) == 1.0
    assert knn_accuracy(features[train], labels[train], features[test], labels[test], k=10) < 0.75


@pytest.mark.parametrize("method", ["lbfgs", "sgd"])
def test_linear_probe_is_deterministic(method):
    features, labels = clustered_features(3, 10, 6, spread=1.0)
    first = train_linear_probe(features, labels, method=method, epochs=5, seed=4)
    torch.manual_seed(123)  # the global RNG must not matter
    second = train_linear_probe(features, labels, method=method, epochs=5, seed=4)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)


# ----------------------------------------------------------------------------- propagation


def block_mask(height: int, width: int, stride: int, cells: dict) -> np.ndarray:
    """An (H, W) uint8 mask made of whole stride×stride cells: {object id: [(row, column), ...]}."""
    mask = np.zeros((height, width), np.uint8)
    for object_id, positions in cells.items():
        for row, column in positions:
            mask[row * stride:(row + 1) * stride, column * stride:(column + 1) * stride] = object_id
    return mask


@pytest.mark.parametrize("radius", [None, 1])
def test_identical_frames_propagate_the_mask_exactly(radius):
    """Features at the mask's resolution, the same frame six times: every pixel keeps its label."""
    mask = np.random.default_rng(0).choice(np.array([0, 1, 3], np.uint8), size=(9, 11), p=[0.5, 0.3, 0.2])
    features = torch.randn(1, 32, 9, 11).repeat(6, 1, 1, 1)  # (T, C, h, w)
    predicted = propagate_labels(features, mask, neighbourhood_radius=radius)
    assert predicted.shape == (6, 9, 11) and predicted.dtype == np.uint8
    assert np.array_equal(predicted, np.broadcast_to(mask, predicted.shape))
    result = region_similarity(predicted, np.broadcast_to(mask, predicted.shape))
    assert result == {"J": 1.0, "per_object": {1: 1.0, 3: 1.0}}


def test_identical_coarse_frames_lose_only_corners():
    """Stride-8 features: labels upsampled bilinearly round the corners of a block mask, nothing else."""
    mask = block_mask(40, 56, 8, {1: [(1, 1), (1, 2), (2, 1), (2, 2)], 3: [(3, 5), (4, 5)]})
    predicted = propagate_labels(torch.randn(1, 24, 5, 7).repeat(4, 1, 1, 1), mask)
    wrong = predicted[1:] != mask
    assert 0 < wrong.sum() <= 3 * 6 * 8  # a few pixels at each of 6 convex corners
    assert region_similarity(predicted, np.broadcast_to(mask, predicted.shape))["J"] > 0.9


def test_propagation_tracks_a_moving_object():
    """Background cells keep their features; a 2x2 object moves one cell right per frame."""
    stride, (rows, columns), frames = 4, (6, 10), 6
    background = torch.randn(16, rows, columns)
    object_feature = torch.randn(16)
    features, truth = [], []
    for time in range(frames):
        cells = [(2, 1 + time), (2, 2 + time), (3, 1 + time), (3, 2 + time)]
        frame = background.clone()
        for row, column in cells:
            frame[:, row, column] = object_feature + 0.1 * torch.randn(16)
        features.append(frame)
        truth.append(block_mask(rows * stride, columns * stride, stride, {1: cells}))
    truth = np.stack(truth)
    predicted = propagate_labels(torch.stack(features), truth[0], num_previous=2, topk=3)
    # cells the object uncovers were never seen as background: those are the only errors allowed
    # (over 200 seeds J ranged from 0.79, when an uncovered cell's neighbours tie, to 1)
    assert region_similarity(predicted, truth)["J"] > 0.75
    # a method that keeps the first mask does much worse: J measures the tracking
    assert region_similarity(np.broadcast_to(truth[0], truth.shape), truth)["J"] < 0.3


def test_region_similarity_known_values():
    truth = np.zeros((3, 4, 4), np.uint8)
    truth[:, :2, :2] = 1  # 4 pixels
    predicted = truth.copy()
    predicted[1, :2, :2] = 0
    predicted[1, :1, :2] = 1  # 2 of the 4 pixels: IoU 0.5
    predicted[2] = 0  # missed: IoU 0
    assert region_similarity(predicted, truth)["J"] == pytest.approx(0.25)  # frames 1, 2
    assert region_similarity(predicted, truth, skip_first=False)["J"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- robustness


@pytest.fixture
def textured_images() -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = rng.uniform(40, 215, size=(3, 8, 8, 3)).repeat(6, axis=1).repeat(6, axis=2)
    return np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corruptions_identity_at_zero_and_grow_with_severity(corruption, textured_images):
    assert np.array_equal(corrupt(textured_images, corruption, 0), textured_images)
    distances = [np.abs(corrupt(textured_images, corruption, severity).astype(np.float32)
                        - textured_images).mean() for severity in range(6)]
    assert distances[0] == 0 and all(later > earlier for earlier, later in zip(distances, distances[1:])), distances
    single = corrupt(textured_images[0], corruption, 3)
    assert single.shape == textured_images[0].shape and single.dtype == np.uint8
    assert np.array_equal(corrupt(textured_images, corruption, 4, seed=1), corrupt(textured_images, corruption, 4,
                                                                                   seed=1))


def colour_dataset(per_class: int) -> LabelledImages:
    """Three classes of noisy flat images: reddish, greenish, bluish."""
    rng = np.random.default_rng(1)
    images, labels = [], []
    for label in range(3):
        for _ in range(per_class):
            colour = np.full(3, 60.0)
            colour[label] = 190
            images.append(np.clip(colour + rng.normal(0, 20, (12, 12, 3)), 0, 255))
            labels.append(label)
    labels = np.array(labels)
    return LabelledImages(np.array(images, np.uint8), labels, np.arange(len(labels)), ["red", "green", "blue"])


def centre_pixel(images: np.ndarray) -> torch.Tensor:
    """A fragile feature: the colour of one pixel."""
    return torch.from_numpy(images[:, 6, 6].astype(np.float32))


@pytest.mark.parametrize("probe", ["linear", "knn"])
def test_robustness_identity_severity_keeps_accuracy(probe):
    data = colour_dataset(10)
    train, test = data.subset(np.arange(0, 30, 2)), data.subset(np.arange(1, 30, 2))
    same = robustness_evaluation(centre_pixel, train, test, probe=probe, severities=(0,))
    assert same["clean"] == 1.0 and same["relative_drop"] == 0.0
    assert all(entry["severity"] == {0: 1.0} for entry in same["corruptions"].values())
    full = robustness_evaluation(centre_pixel, train, test, probe=probe, corruptions=("gaussian_noise", "jpeg"))
    noise = full["corruptions"]["gaussian_noise"]
    assert set(noise["severity"]) == {1, 2, 3, 4, 5}
    # noise of std 0.38 (97 levels) at severity 5 confuses a one-pixel feature; severity 1 (20 levels) less so
    assert noise["severity"][5] < 0.9 and noise["severity"][5] < noise["severity"][1]
    assert noise["relative_drop"] == pytest.approx((full["clean"] - noise["mean"]) / full["clean"]) and \
        noise["relative_drop"] > 0
    assert full["mean_corrupted"] == pytest.approx((noise["mean"] + full["corruptions"]["jpeg"]["mean"]) / 2)
    chance = 1 / len(data.class_names)
    assert full["kept_above_chance"] == pytest.approx((full["mean_corrupted"] - chance) / (full["clean"] - chance))


def test_a_model_at_chance_has_nothing_to_lose():
    from vito_fast.eval.robustness import kept_above_chance

    assert kept_above_chance(0.26, 0.27, 4) is None  # the relative drop (-4%) would call it robust
    assert kept_above_chance(0.60, 0.35, 4) == pytest.approx(0.10 / 0.35)


# ----------------------------------------------------------------------------- attention maps


def test_overlay_shows_where_attention_is_and_how_peaked(tmp_path):
    frame = np.full((48, 64, 3), 100, np.uint8)
    attention = np.zeros((6, 8), np.float32)
    attention[:3, :4] = 1.0  # top-left quarter: 4x uniform there, nothing elsewhere
    for normalise in ("minmax", "uniform"):
        shown = overlay_attention(frame, attention, normalise=normalise)
        assert shown.shape == frame.shape and shown.dtype == np.uint8
        brightness = shown.astype(int).sum(axis=2)
        assert brightness[:16, :24].min() > brightness[32:, 40:].max() + 100  # attended: bright, the rest dark
    # a flat map is shown (one even mid-colour), not hidden: a reader sees at once that it is flat
    flat = overlay_attention(frame, np.full((6, 8), 1 / 48)).astype(int)
    assert np.abs(flat - frame).sum(axis=2).min() > 30 and np.ptp(flat.reshape(-1, 3), axis=0).max() == 0
    # the colour says the ratio to uniform on one scale: 4x uniform sits between flat and a single peak
    peak = np.zeros((6, 8), np.float32)
    peak[0, 0] = 1.0  # 48x uniform: the top of the scale
    value = lambda maps: upsample_attention(maps, (6, 8))  # noqa: E731
    assert value(np.full((6, 8), 1 / 48)).max() == pytest.approx(0.5)
    assert value(attention)[0, 0] == pytest.approx(0.5 + np.log(4) / (2 * np.log(RATIO_RANGE)), abs=1e-5)
    assert value(peak)[0, 0] == pytest.approx(1.0)
    bar = colour_bar(120)
    assert bar.shape == (120, 72, 3) and bar[20:110, 4].std() > 20  # a gradient, with labels beside it
    panel = attention_panel(np.stack([frame] * 3), {"layer3": np.stack([attention] * 3),
                                                    "layer4": np.stack([attention[::-1]] * 3)})
    assert panel.shape == (3 * 48, 64 + 3 * 64 + 72, 3)  # names, frames, colour bar
    path = save_png(panel, tmp_path / "out" / "attention.png")
    with Image.open(path) as written:
        assert written.format == "PNG" and written.size == (64 + 3 * 64 + 72, 3 * 48)
        assert np.array_equal(np.asarray(written.convert("RGB")), panel)
    gif = save_gif([panel, panel[::-1].copy()], tmp_path / "attention.gif", fps=4)
    with Image.open(gif) as animation:
        assert animation.n_frames == 2


def test_attention_mask_iou_known_answers():
    masks = np.zeros((2, 32, 32), bool)
    masks[:, 4:12, 20:28] = True  # an object off-centre
    on_object = masks.astype(np.float32) / masks[0].sum()
    assert attention_mask_iou(on_object, masks, mass=0.999) == 1.0
    centred = centred_gaussian_attention(2, 8, 8)
    assert centred.shape == (2, 8, 8) and centred[0].sum() == pytest.approx(1.0)
    assert attention_mask_iou(centred, masks) < 0.1


# ----------------------------------------------------------------------------- features and encoders


class TinyEncoder(torch.nn.Module):
    """Maps (B, 3, H, W) to a dict of a (B, 4, H/2, W/2) map and a (B, 2) vector."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, images):
        return {"map": self.conv(images), "vector": self.linear(images.mean(dim=(2, 3)))}


def test_extract_features_pools_maps_concatenates_scales_and_batches():
    encoder = TinyEncoder().train()
    images = np.random.default_rng(0).integers(0, 256, (7, 10, 12, 3), dtype=np.uint8)
    features = extract_features(encoder, images, batch_size=3)
    assert features.shape == (7, 6) and not features.requires_grad
    assert encoder.training  # the mode is given back
    whole = extract_features(encoder, images, batch_size=100)
    torch.testing.assert_close(features, whole)
    maps = extract_feature_maps(encoder, images, scale=0, batch_size=2)
    assert maps.shape == (7, 4, 5, 6)
    torch.testing.assert_close(maps.mean(dim=(2, 3)), features[:, :4])


def test_image_folder_and_group_split(tmp_path):
    for name, colour in (("cat", 50), ("dog", 200)):
        (tmp_path / name).mkdir()
        for index in range(3):
            Image.fromarray(np.full((10, 14, 3), colour + index, np.uint8)).save(tmp_path / name / f"{index}.png")
    data = load_image_folder(tmp_path)
    assert data.class_names == ["cat", "dog"] and data.images.shape == (6, 10, 14, 3)
    assert list(data.labels) == [0, 0, 0, 1, 1, 1] and data.images[4, 0, 0, 0] == 201
    assert load_image_folder(tmp_path, size=(8, 8)).images.shape == (6, 8, 8, 3)
    groups = np.repeat(np.arange(8), 3)
    labels = np.repeat([0, 1], 12)
    train, test = split_by_group(labels, groups, test_fraction=0.25, seed=0)
    assert set(groups[train]).isdisjoint(groups[test]) and len(train) + len(test) == 24
    assert set(labels[test]) == {0, 1} and len(test) == 6


def test_group_folds_test_every_group_once_and_never_split_one():
    groups = np.repeat(np.arange(10), 3)
    labels = np.repeat([0, 1], 15)
    folds = group_folds(labels, groups, folds=4, seed=1)
    assert len(folds) == 4
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(30))  # every frame tested exactly once
    for train, test in folds:
        assert set(groups[train]).isdisjoint(groups[test]) and len(train) + len(test) == 30
        assert len(set(groups[test])) in (2, 3)  # 10 clips dealt to 4 folds, classes in turn
    with pytest.raises(ValueError, match="folds"):
        group_folds(labels, groups, folds=1)


@pytest.mark.usefixtures("pyav")
def test_manifest_frames_from_synthetic_data(tmp_path):
    from vito_fast.synthetic import generate_dataset

    dataset = generate_dataset(tmp_path, num_classes=2, videos_per_class=2, num_frames=6, size=(32, 32),
                               progress=False)
    data = load_manifest_frames(dataset.manifest_path, frames_per_clip=3, class_names=dataset.class_names)
    assert data.images.shape == (12, 32, 32, 3)
    assert list(data.labels) == [0] * 6 + [1] * 6 and list(data.groups) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    decoded = dataset.load_frames(0)
    for image, frame_index in zip(data.images[:3], (0, 2, 5)):  # evenly spaced over the 6 frames of video 0
        errors = [np.abs(image.astype(int) - frame).mean() for frame in decoded]
        assert int(np.argmin(errors)) == frame_index and errors[frame_index] == 0


def test_load_encoder_random_init_weights_file_and_run(tmp_path):
    images = torch.randn(2, 3, 64, 64)
    random_encoder = load_encoder(random_init=True, arch="resnet18", stages=("layer3", "layer4"), seed=1)
    maps = random_encoder(images)
    assert [tuple(m.shape) for m in maps] == [(2, 256, 4, 4), (2, 512, 2, 2)]
    # an exported file: torchvision names, with an fc the encoder ignores
    weights = {**random_encoder.state_dict(), "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    torch.save(weights, tmp_path / "trunk.pt")
    from_file = load_encoder(tmp_path / "trunk.pt", stages=("layer3", "layer4"))
    torch.testing.assert_close(from_file(images), maps)
    # a run directory: checkpoint.pt with the online trunk under "online.trunk."
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {f"online.trunk.{key}": value for key, value in random_encoder.state_dict().items()},
                "target": {}, "config": {"model": {"arch": "resnet18", "stages": ["layer3", "layer4"]}}},
               run / "checkpoint.pt")
    from_run = load_encoder(run)
    assert from_run.stages == ("layer4",)
    torch.testing.assert_close(from_run(images)[0], maps[1])
    with pytest.raises(ValueError, match="missing"):
        load_encoder(tmp_path / "trunk.pt", arch="resnet50")
    with pytest.raises(FileNotFoundError, match="vito-fast pretrain"):
        load_encoder(tmp_path / "nothing")
    assert isinstance(from_run, EvalEncoder)


@pytest.mark.usefixtures("pyav")
def test_eval_cli_knn_and_linear_write_json(tmp_path, capsys):
    from vito_fast.cli.main import main
    from vito_fast.synthetic import generate_dataset

    dataset = generate_dataset(tmp_path / "data", num_classes=2, videos_per_class=3, num_frames=6, size=(32, 32),
                               progress=False)
    for kind in ("knn", "linear"):
        output = tmp_path / f"{kind}.json"
        code = main(["eval", kind, "--manifest", str(dataset.manifest_path), "--random-init", "--frames-per-clip",
                     "2", "--output", str(output)])
        assert code == 0
        result = json.loads(output.read_text())
        assert result["evaluation"] == kind and 0.0 <= result["accuracy"] <= 1.0
        assert result["num_train"] + result["num_test"] == 12 and result["encoder"] == "random-init resnet18"
        assert "accuracy" in capsys.readouterr().out


@pytest.mark.usefixtures("pyav")
def test_eval_cli_propagate_robustness_and_shape_bias(tmp_path, capsys):
    from vito_fast.cli.main import main
    from vito_fast.synthetic import generate_dataset

    dataset = generate_dataset(tmp_path / "data", num_classes=2, videos_per_class=2, num_frames=5, size=(32, 32),
                               progress=False)
    output = tmp_path / "propagate.json"
    assert main(["eval", "propagate", "--synthetic", str(dataset.root), "--random-init", "--max-videos", "2",
                 "--stage", "layer2", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert len(result["per_video"]) == 2 and 0.0 < result["J"] <= 1.0
    output = tmp_path / "robustness.json"
    assert main(["eval", "robustness", "--manifest", str(dataset.manifest_path), "--random-init", "--probe", "knn",
                 "--frames-per-clip", "2", "--corruptions", "contrast", "--severities", "1", "5",
                 "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert set(result["corruptions"]["contrast"]["severity"]) == {"1", "5"}  # JSON keys are strings
    assert "relative drop" in capsys.readouterr().out
    output = tmp_path / "shape.json"
    assert main(["eval", "shape-bias", "--synthetic", str(dataset.root), "--random-init", "--probe", "knn",
                 "--frames-per-clip", "2", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["videos"] == 4 and result["decisions"] == 8
    assert result["shape"] + result["texture"] + result["other"] == pytest.approx(1.0)
    assert "shape bias" in capsys.readouterr().out
    assert main(["eval", "shape-bias", "--synthetic", str(tmp_path / "nowhere"), "--random-init"]) == 1
    assert "needs the built-in videos" in capsys.readouterr().err
    assert main(["eval", "knn", "--manifest", str(tmp_path / "missing.jsonl"), "--random-init"]) == 1
    assert "no such manifest" in capsys.readouterr().err


def write_tiny_run(run, *overrides: str) -> None:
    """A run directory as `vito-fast pretrain` leaves it, for an untrained tiny VITO (no training needed)."""
    from vito_fast.model.vito import VITO
    from vito_fast.train.config import load_config, to_dict

    config = load_config(preset="demo", overrides=["model.pool_hidden=8", "model.proj_hidden=16",
                                                   "model.pred_hidden=16", "model.proj_dim=8",
                                                   "data.image_size=64", *overrides])
    model = VITO.from_config(config.model)
    run.mkdir()
    torch.save({"format": 1, "step": 0, "config": to_dict(config),
                "model": {key: value for key, value in model.state_dict().items() if not key.startswith("target.")},
                "target": model.target.state_dict()}, run / "checkpoint.pt")


@pytest.mark.usefixtures("pyav")
def test_attention_encoder_from_run_and_viz_cli(tmp_path, capsys):
    from vito_fast.cli.main import main
    from vito_fast.synthetic import generate_dataset

    run = tmp_path / "run"
    write_tiny_run(run)
    encoder = load_encoder(run, pooling="attention")
    assert encoder.stages == ("layer3", "layer4")
    vectors = encoder(torch.randn(3, 3, 64, 64))
    assert [tuple(v.shape) for v in vectors] == [(3, 128), (3, 256)]  # the demo preset: half-width ResNet-18
    attention = encoder.last_attention
    assert tuple(attention["layer3"].shape) == (3, 4, 4) and tuple(attention["layer4"].shape) == (3, 2, 2)
    torch.testing.assert_close(attention["layer4"].sum(dim=(1, 2)), torch.ones(3))
    dataset = generate_dataset(tmp_path / "data", num_classes=1, videos_per_class=1, num_frames=6, size=(48, 64),
                               progress=False)
    output = tmp_path / "viz" / "attention.png"
    assert main(["viz", "attention", str(run), dataset.videos[0].path, "-o", str(output), "--frames", "3",
                 "--gif", str(tmp_path / "viz" / "attention.gif"), "--display-height", "48"]) == 0
    with Image.open(output) as written:
        assert written.size == (64 + 3 * 64 + 72, 3 * 48)  # names, 3 frames, colour bar; frames, layer3, layer4
    summary = json.loads(output.with_suffix(".json").read_text())
    assert summary["frames"] == [0, 2, 5]
    assert summary["attention_shape"] == {"layer3": [4, 6], "layer4": [2, 3]}  # the model sees 64x85
    with Image.open(tmp_path / "viz" / "attention.gif") as animation:
        assert animation.n_frames == 6 and animation.size == (3 * 64 + 72, 48)  # frame, 2 overlays, colour bar
    assert "layer3" in capsys.readouterr().out
    assert main(["viz", "attention", str(tmp_path / "no-run"), dataset.videos[0].path, "-o", str(output)]) == 1
    assert "vito-fast pretrain" in capsys.readouterr().err
    write_tiny_run(tmp_path / "average", "model.pooling=average")
    with pytest.raises(ValueError, match="no attention maps"):
        load_encoder(tmp_path / "average", pooling="attention")
    assert load_encoder(tmp_path / "average").stages == ("layer4",)  # its trunk still evaluates


def test_davis_layout_loads_frames_and_palette_masks(tmp_path):
    from vito_fast.eval.propagate import load_davis_sequences

    images, annotations = tmp_path / "JPEGImages" / "480p" / "cars", tmp_path / "Annotations" / "480p" / "cars"
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    for index in range(3):
        Image.fromarray(np.full((16, 24, 3), 40 * index, np.uint8)).save(images / f"{index:05d}.jpg")
        mask = Image.fromarray(np.where(np.arange(24)[None, :] < 8 + index, 2, 0).repeat(16, 0).astype(np.uint8),
                               mode="P")
        mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
        mask.save(annotations / f"{index:05d}.png")
    [(name, frames, masks)] = load_davis_sequences(tmp_path)
    assert name == "cars" and frames.shape == (3, 16, 24, 3) and masks.shape == (3, 16, 24)
    assert set(np.unique(masks)) == {0, 2} and (masks[2] == 2).sum() == 16 * 10  # palette indices are the ids
    with pytest.raises(FileNotFoundError, match="DAVIS layout"):
        load_davis_sequences(tmp_path / "JPEGImages")


def test_attention_mass_on_masks_known_answers():
    from vito_fast.eval.viz import attention_mass_on_masks

    masks = np.zeros((2, 8, 8), bool)
    masks[:, :4, :] = True  # the top half
    inside = np.zeros((2, 4, 4), np.float32)
    inside[:, 0, 1] = 1.0  # a sharp peak well inside the top half
    assert attention_mass_on_masks(inside, masks) == pytest.approx(1.0)
    assert attention_mass_on_masks(np.ones((2, 4, 4), np.float32), masks) == pytest.approx(0.5)  # uniform: area
    outside = np.zeros((2, 4, 4), np.float32)
    outside[:, 3, 2] = 5.0
    assert attention_mass_on_masks(outside, masks) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="attention_mass_on_masks"):
        attention_mass_on_masks(inside[0], masks)


# ----------------------------------------------------------------------------- shape bias


@pytest.mark.usefixtures("pyav")
def test_cue_conflict_twin_differs_from_its_video_only_on_the_main_object(tmp_path):
    from vito_fast.synthetic import generate_dataset
    from vito_fast.synthetic.videos import CLASS_DEFINITIONS, render_cue_conflict

    dataset = generate_dataset(tmp_path, num_classes=3, videos_per_class=2, num_frames=6, size=(48, 48),
                               object_scale=1.6, progress=False)
    for index in range(len(dataset.videos)):
        twin, shape, texture = render_cue_conflict(dataset.root, index)
        assert shape == dataset.videos[index].class_id and texture != shape and 0 <= texture < 3
        assert CLASS_DEFINITIONS[shape][1] != CLASS_DEFINITIONS[texture][1]
        frames, masks = dataset.load_frames(index), dataset.load_masks(index)
        difference = np.abs(twin.astype(int) - frames.astype(int)).sum(axis=3)
        main_object, background = masks == 1, masks == 0
        # far from the object (codec noise only) vs on it (another texture)
        far = background & (np.abs(np.gradient(main_object.astype(float), axis=(1, 2))).sum(0) == 0)
        assert difference[far].mean() < 6, index
        assert difference[main_object].mean() > 4 * max(difference[far].mean(), 1.0), index


def test_shape_bias_counts_the_cue_the_probe_follows():
    from vito_fast.eval.features import LabelledImages
    from vito_fast.eval.shape_bias import shape_bias

    rng = np.random.default_rng()
    classes = 4
    labels = rng.integers(0, classes, 80)
    train = LabelledImages(np.zeros((80, 2, 2, 3), np.uint8), labels, np.arange(80), [f"c{i}" for i in range(classes)])
    train.images[:, 0, 0, 0] = labels  # the "feature" a featurizer reads: one pixel holds a class

    def featurize(images):
        return torch.nn.functional.one_hot(torch.from_numpy(images[:, 0, 0, 0].astype(np.int64)), classes).float()

    shapes = rng.integers(0, classes, 30)
    textures = (shapes + rng.integers(1, classes, 30)) % classes
    for cue, expected in (("shape", 1.0), ("texture", 0.0)):
        images = np.zeros((30, 2, 2, 3), np.uint8)
        images[:, 0, 0, 0] = shapes if cue == "shape" else textures
        for probe in ("linear", "knn"):
            result = shape_bias(featurize, train, images, shapes, textures, probe=probe, k=5)
            assert result["shape_bias"] == expected and result["other"] == 0.0, (cue, probe)
    mixed = np.zeros((30, 2, 2, 3), np.uint8)
    mixed[:, 0, 0, 0] = np.where(np.arange(30) < 20, shapes, textures)  # 20 follow the shape, 10 the texture
    assert shape_bias(featurize, train, mixed, shapes, textures)["shape_bias"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="different shape and texture"):
        shape_bias(featurize, train, mixed, shapes, shapes)
