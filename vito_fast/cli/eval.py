"""`vito-fast eval`: frozen-feature evaluations of a run, exported weights, or a random-init baseline.

    vito-fast eval knn        (--run RUN | --weights FILE | --random-init) (--manifest M | --images DIR) [--k 20]
    vito-fast eval linear     ... [--method lbfgs|sgd]
    vito-fast eval robustness ... [--probe linear|knn] [--corruptions ...] [--severities 1 2 3 4 5]
    vito-fast eval propagate  (--run RUN | ...) (--synthetic DIR | --davis ROOT) [--stage STAGE] [--topk 5]

Without ``--test-manifest``/``--test-images`` the labelled set is split into train and test by
clip (``--test-fraction``), so frames of one clip never sit on both sides. Each evaluation prints
a short table and writes a JSON result (``--output``, default ``eval-<kind>.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from vito_fast.cli._args import EXIT_FAILURE, EXIT_OK
from vito_fast.errors import VitoError
def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run directory of `vito-fast pretrain` (reads RUN/checkpoint.pt)")
    source.add_argument("--weights", help="trunk weights from `vito-fast export` (torchvision names)")
    source.add_argument("--random-init", action="store_true", help="a randomly initialised trunk (baseline)")
    parser.add_argument("--arch", default=None, help="torchvision ResNet (default: the run's, else resnet18)")
    parser.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                        help="trunk stages whose features are used, average-pooled and concatenated "
                             "(default: the last stage of the run, else layer4)")
    parser.add_argument("--pooling", choices=("maps", "attention"), default="maps",
                        help="average-pool the feature maps (default) or use the run's learned attention pools")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random init, split and probe seed (default 0)")
    parser.add_argument("-o", "--output", default=None, help="JSON result to write (default eval-<kind>.json)")


def add_labelled_data_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--manifest", help="manifest whose clips carry labels (e.g. built-in data's manifest.jsonl)")
    data.add_argument("--images", help="image folder: one sub-folder of images per class")
    test = parser.add_mutually_exclusive_group()
    test.add_argument("--test-manifest", help="labelled test manifest (default: split --manifest by clip)")
    test.add_argument("--test-images", help="test image folder (default: split --images)")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="share of clips held out (default 0.25)")
    parser.add_argument("--frames-per-clip", type=int, default=4, help="frames taken from each clip (default 4)")
    parser.add_argument("--image-size", type=int, default=None, help="resize images to N x N (default: keep)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vito-fast eval", description="Evaluate frozen features of an encoder.")
    commands = parser.add_subparsers(dest="evaluation", metavar="EVALUATION", title="evaluations", required=True)
    knn = commands.add_parser("knn", help="weighted k-nearest-neighbour top-1 accuracy (cosine)")
    linear = commands.add_parser("linear", help="linear probe top-1 accuracy")
    robustness = commands.add_parser("robustness", help="probe accuracy under synthetic corruptions")
    propagate = commands.add_parser("propagate", help="label propagation of first-frame masks; region similarity J")
    shape = commands.add_parser("shape-bias", help="share of a probe's decisions that follow shape, not texture, "
                                                   "on cue-conflict twins of the built-in videos")
    add_encoder_arguments(shape)
    shape.add_argument("--synthetic", default=None,
                       help="built-in data folder (default: RUN/data, the videos `pretrain` made without --data)")
    shape.add_argument("--probe", choices=("linear", "knn"), default="linear", help="probe (default linear)")
    shape.add_argument("--frames-per-clip", type=int, default=4, help="frames taken from each clip (default 4)")
    shape.add_argument("--max-videos", type=int, default=None, help="cue-conflict twins of at most this many videos")
    shape.add_argument("--k", type=int, default=20, help="kNN neighbours (default 20)")
    shape.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature (default 0.07)")
    for sub in (knn, linear, robustness):
        add_encoder_arguments(sub)
        add_labelled_data_arguments(sub)
    for sub in (knn, robustness):
        sub.add_argument("--k", type=int, default=20, help="neighbours (default 20)")
        sub.add_argument("--temperature", type=float, default=0.07, help="vote temperature (default 0.07)")
    linear.add_argument("--method", choices=("lbfgs", "sgd"), default="lbfgs", help="probe optimiser (default lbfgs)")
    linear.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty on the weights (default 1e-4)")
    robustness.add_argument("--probe", choices=("linear", "knn"), default="linear", help="probe (default linear)")
    robustness.add_argument("--corruptions", nargs="+", default=None, metavar="NAME",
                            help="subset of gaussian_noise gaussian_blur jpeg contrast brightness (default all)")
    robustness.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="1..5 (default all)")
    add_encoder_arguments(propagate)
    clips = propagate.add_mutually_exclusive_group(required=True)
    clips.add_argument("--synthetic", help="built-in data folder (generate_dataset / vito-fast demo)")
    clips.add_argument("--davis", help="DAVIS-layout folder: JPEGImages/480p/<seq>, Annotations/480p/<seq>")
    propagate.add_argument("--max-videos", type=int, default=None, help="evaluate at most this many videos")
    propagate.add_argument("--stage", default=None,
                           help="trunk stage whose maps give affinities (default: layer3 of a ResNet, the run's last "
                                "tapped block of a ViT)")
    propagate.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                           help="resize frames before the encoder (larger: finer feature maps)")
    propagate.add_argument("--topk", type=int, default=5, help="context positions per position (default 5)")
    propagate.add_argument("--temperature", type=float, default=0.07, help="affinity temperature (default 0.07)")
    propagate.add_argument("--num-previous", type=int, default=7, help="previous frames in the context (default 7)")
    propagate.add_argument("--radius", type=int, default=None, help="neighbourhood radius in feature cells")
    return parser


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_encoder(args, stages=None):
    """(encoder, description) from --run / --weights / --random-init."""
    from vito_fast.eval.encoder import load_encoder

    stages = stages or args.stages
    device = resolve_device(args.device)
    if args.random_init:
        encoder = load_encoder(random_init=True, arch=args.arch, stages=stages, seed=args.seed, device=device)
        return encoder, f"random-init {encoder.arch}"
    source = args.run or args.weights
    encoder = load_encoder(source, arch=args.arch, stages=stages, pooling=args.pooling, device=device)
    kind = "run" if args.run else "weights"
    return encoder, f"{kind} {source} ({encoder.arch}, {'+'.join(encoder.stages)}, {args.pooling} pooling)"


def load_labelled(args):
    """(train LabelledImages, test LabelledImages, description of the data)."""
    from vito_fast.eval.features import load_image_folder, load_manifest_frames, split_by_group

    size = (args.image_size, args.image_size) if args.image_size else None

    def load(manifest=None, images=None, class_names=None):
        if manifest is not None:
            return load_manifest_frames(manifest, frames_per_clip=args.frames_per_clip, size=size,
                                        class_names=class_names)
        return load_image_folder(images, size=size)

    data = load(args.manifest, args.images)
    description = args.manifest or args.images
    if args.test_manifest or args.test_images:
        test = load(args.test_manifest, args.test_images, class_names=data.class_names)
        if args.test_images and test.class_names != data.class_names:
            raise VitoError(f"{args.test_images}: classes {test.class_names} differ from {data.class_names}")
        return data, test, description
    train_indices, test_indices = split_by_group(data.labels, data.groups, test_fraction=args.test_fraction,
                                                 seed=args.seed)
    if len(test_indices) == 0:
        raise VitoError(f"{description}: too few clips per class to hold any out; pass --test-manifest/--test-images")
    return data.subset(train_indices), data.subset(test_indices), description


def print_table(title: str, rows: Sequence[Tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(title)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def write_result(result: Dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def run_probe(args) -> Dict:
    from vito_fast.eval.features import extract_features
    from vito_fast.eval.knn import knn_accuracy
    from vito_fast.eval.linear import linear_probe_accuracy

    train, test, description = load_labelled(args)
    encoder, encoder_description = build_encoder(args)
    train_features = extract_features(encoder, train.images, batch_size=args.batch_size)
    test_features = extract_features(encoder, test.images, batch_size=args.batch_size)
    train_labels, test_labels = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    result = {"evaluation": args.evaluation, "encoder": encoder_description, "data": description,
              "num_classes": len(train.class_names), "num_train": len(train), "num_test": len(test),
              "feature_dim": int(train_features.shape[1])}
    if args.evaluation == "knn":
        result.update(k=args.k, temperature=args.temperature,
                      accuracy=knn_accuracy(train_features, train_labels, test_features, test_labels, k=args.k,
                                            temperature=args.temperature))
    else:
        result.update(method=args.method, weight_decay=args.weight_decay,
                      accuracy=linear_probe_accuracy(train_features, train_labels, test_features, test_labels,
                                                     method=args.method, weight_decay=args.weight_decay,
                                                     seed=args.seed))
    return result


def run_robustness(args) -> Dict:
    from vito_fast.eval.features import extract_features
    from vito_fast.eval.robustness import CORRUPTIONS, robustness_evaluation

    corruptions = args.corruptions or list(CORRUPTIONS)
    unknown = [name for name in corruptions if name not in CORRUPTIONS]
    if unknown:
        raise VitoError(f"--corruptions: unknown {unknown}; choose from {', '.join(CORRUPTIONS)}")
    train, test, description = load_labelled(args)
    encoder, encoder_description = build_encoder(args)
    result = robustness_evaluation(lambda images: extract_features(encoder, images, batch_size=args.batch_size),
                                   train, test, probe=args.probe, corruptions=corruptions,
                                   severities=args.severities, k=args.k, temperature=args.temperature, seed=args.seed)
    return {"evaluation": "robustness", "encoder": encoder_description, "data": description,
            "num_train": len(train), "num_test": len(test), **result}


def run_propagate(args) -> Dict:
    from vito_fast.eval.features import extract_feature_maps
    from vito_fast.eval.propagate import load_davis_sequences, propagate_labels, region_similarity

    if args.synthetic:
        from vito_fast.synthetic.videos import SyntheticDataset

        dataset = SyntheticDataset.open(args.synthetic)
        count = len(dataset.videos) if args.max_videos is None else min(args.max_videos, len(dataset.videos))
        sequences = ((Path(dataset.videos[i].path).stem, dataset.load_frames(i), dataset.load_masks(i))
                     for i in range(count))
        description = args.synthetic
    else:
        loaded = load_davis_sequences(args.davis)
        sequences = iter(loaded[: args.max_videos] if args.max_videos else loaded)
        description = args.davis
    encoder, encoder_description = build_encoder(args, stages=None if args.stage is None else [args.stage])
    if args.stage is None and encoder.stages[0].startswith("layer"):  # a ResNet: stride-16 maps, as for DAVIS
        encoder, encoder_description = build_encoder(args, stages=["layer3"])
    args.stage = encoder.stages[0]
    if args.pooling == "attention":
        raise VitoError("eval propagate: needs feature maps; leave --pooling at maps")
    per_video = {}
    for name, frames, masks in sequences:
        maps = extract_feature_maps(encoder, frames, batch_size=args.batch_size,
                                    image_size=tuple(args.image_size) if args.image_size else None)
        predicted = propagate_labels(maps, masks[0], num_previous=args.num_previous, topk=args.topk,
                                     temperature=args.temperature, neighbourhood_radius=args.radius)
        per_video[name] = region_similarity(predicted, masks)["J"]
    if not per_video:
        raise VitoError(f"{description}: no videos to evaluate")
    return {"evaluation": "propagate", "encoder": encoder_description, "data": description, "stage": args.stage,
            "topk": args.topk, "temperature": args.temperature, "num_previous": args.num_previous,
            "radius": args.radius, "J": float(np.mean(list(per_video.values()))), "per_video": per_video}


def run_shape_bias(args) -> Dict:
    from vito_fast.eval.features import extract_features, load_manifest_frames
    from vito_fast.eval.shape_bias import cue_conflict_images, shape_bias

    root = Path(args.synthetic) if args.synthetic else (Path(args.run) / "data" if args.run else None)
    if root is None or not (root / "dataset.json").is_file():
        raise VitoError(f"{root or 'eval shape-bias'}: needs the built-in videos (a folder with dataset.json): "
                        "pass --synthetic DIR, or --run RUN of a pretrain on the built-in data")
    train = load_manifest_frames(root / "manifest.jsonl", frames_per_clip=args.frames_per_clip)
    count = len(set(train.groups.tolist()))
    videos = np.unique(np.linspace(0, count - 1, min(args.max_videos or count, count)).round().astype(int))
    images, shapes, textures = cue_conflict_images(root, videos, frames_per_clip=args.frames_per_clip)
    encoder, encoder_description = build_encoder(args)
    result = shape_bias(lambda batch: extract_features(encoder, batch, batch_size=args.batch_size), train, images,
                        shapes, textures, probe=args.probe, k=args.k, temperature=args.temperature, seed=args.seed)
    return {"evaluation": "shape-bias", "encoder": encoder_description, "data": str(root), "probe": args.probe,
            "videos": int(len(videos)), **result}


def summary_rows(result: Dict) -> List[Tuple[str, str]]:
    rows = [("encoder", result["encoder"]), ("data", str(result["data"]))]
    if result["evaluation"] in ("knn", "linear"):
        rows += [("train / test", f"{result['num_train']} / {result['num_test']} images, "
                                  f"{result['num_classes']} classes"),
                 ("top-1 accuracy", f"{100 * result['accuracy']:.1f}%")]
    elif result["evaluation"] == "robustness":
        rows.append(("clean accuracy", f"{100 * result['clean']:.1f}%"))
        for name, entry in result["corruptions"].items():
            rows.append((name, f"{100 * entry['mean']:.1f}%  (relative drop {100 * entry['relative_drop']:.1f}%)"))
        rows.append(("mean corrupted", f"{100 * result['mean_corrupted']:.1f}%  "
                                       f"(relative drop {100 * result['relative_drop']:.1f}%)"))
        kept = result.get("kept_above_chance")
        rows.append(("kept above chance", "n/a: clean accuracy within 5 points of chance, nothing to lose"
                     if kept is None else f"{100 * kept:.1f}% of the accuracy above chance survives"))
    elif result["evaluation"] == "shape-bias":
        rows += [("cue-conflict frames", f"{result['decisions']} of {result['videos']} videos ({result['probe']} probe)"),
                 ("decisions", f"shape {100 * result['shape']:.1f}%, texture {100 * result['texture']:.1f}%, "
                               f"other {100 * result['other']:.1f}%"),
                 ("shape bias", f"{result['shape_bias']:.3f}")]
    else:
        rows += [("videos", str(len(result["per_video"]))), ("J (mean IoU)", f"{result['J']:.3f}")]
    return rows


def main(argv: List[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        if args.evaluation in ("knn", "linear"):
            result = run_probe(args)
        elif args.evaluation == "robustness":
            result = run_robustness(args)
        elif args.evaluation == "shape-bias":
            result = run_shape_bias(args)
        else:
            result = run_propagate(args)
    except (VitoError, FileNotFoundError, ValueError) as error:
        print(f"vito-fast eval {args.evaluation}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    result["seconds"] = round(time.perf_counter() - started, 2)
    print_table(f"vito-fast eval {args.evaluation}", summary_rows(result))
    write_result(result, args.output or f"eval-{args.evaluation}.json")
    return EXIT_OK
