"""Does the torch backend train as well as DALI? The demo's VITO run on the built-in videos, once per backend.

    python benches/bench_backend_knn.py --out runs/backend-knn [--steps 1200] [--seeds 1] [--backends dali torch]

Per backend and seed: ``vito-fast demo``'s VITO variant (the demo preset, its short-run optimiser,
the same built-in videos and step count), trained with ``data.backend`` set, then the demo's
evaluation (kNN and linear probes, 4-fold over whole videos). A run whose checkpoint is already in
OUT is evaluated, not trained again (add seeds to a finished comparison).

Training at the demo's scale is chaotic: the two backends' batches differ by one uint8 level in a
few pixels, their losses by 1e-4 at the first step and by 0.1-0.5 within ten steps, so a run with
either backend is as far from the other as a run with another seed. The verdict therefore compares
the backends over seeds: the mean of the per-seed differences (torch − DALI) against its standard
error across seeds; the demo's paired bootstrap over videos is printed per seed beside it.
Writes OUT/backend_knn.json and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/backend-knn", help="output folder (built-in videos and runs)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the demo's)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per backend")
    parser.add_argument("--backends", nargs="+", default=["dali", "torch"], choices=["dali", "torch"])
    args = parser.parse_args(argv)

    from vito_fast.demo.data import evaluation_data
    from vito_fast.demo.evaluate import evaluate_run
    from vito_fast.demo.metrics import accuracy_metric, paired_bootstrap
    from vito_fast.demo.settings import DEFAULT_STEPS, SHORT_RUN_OPTIMISER, DemoSettings
    from vito_fast.eval.features import load_manifest_frames
    from vito_fast.synthetic.videos import generate_dataset
    from vito_fast.train.config import load_config
    from vito_fast.train.loop import train

    out = Path(args.out)
    settings = DemoSettings(out_dir=str(out))
    steps = args.steps or DEFAULT_STEPS
    dataset = generate_dataset(out / "data", **settings.data_settings(), progress=True)
    frames = load_manifest_frames(dataset.manifest_path, frames_per_clip=min(settings.eval_frames_per_clip,
                                                                             settings.videos.num_frames),
                                  class_names=dataset.class_names)
    data = evaluation_data(dataset, frames, eval_videos=settings.eval_videos, progress=True)
    base = [f"data.path={dataset.manifest_path}", "train.image_every=0", "train.progress=true", *SHORT_RUN_OPTIMISER,
            f"train.steps={steps}", f"train.checkpoint_every={steps}", f"optim.warmup_steps={max(1, steps // 10)}"]
    results: Dict[str, list] = {backend: [] for backend in args.backends}
    record: Dict[str, object] = {"steps": steps, "date": time.strftime("%Y-%m-%d"), "runs": {}, "differences": []}
    for seed in range(args.seeds):
        for backend in args.backends:
            run_dir = out / "runs" / f"{backend}-seed{seed}"
            started = time.perf_counter()
            if not (run_dir / "checkpoint.pt").is_file():
                train(load_config(preset="demo", overrides=base + [f"train.seed={seed}", f"data.backend={backend}"]),
                      run_dir)
            result, _ = evaluate_run(run_dir, data, seed=0)
            results[backend].append(result)
            record["runs"][run_dir.name] = {"knn": result.knn, "knn_se": result.knn_se, "linear": result.linear,
                                            "linear_se": result.linear_se,
                                            "seconds": round(time.perf_counter() - started, 1)}
            print(f"{run_dir.name}: kNN {100 * result.knn:.1f}% ± {100 * result.knn_se:.1f}, "
                  f"linear {100 * result.linear:.1f}% ± {100 * result.linear_se:.1f}", flush=True)
    knn, count = accuracy_metric("knn"), len(data.videos)
    rows = []
    if len(args.backends) == 2:
        first, second = args.backends
        for seed in range(args.seeds):
            a, b, error = paired_bootstrap(knn, results[second][seed], knn, results[first][seed], count)
            rows.append((f"{second} − {first}, seed {seed}", a - b, error))
    for backend in args.backends:
        if args.seeds >= 2:
            a, b, error = paired_bootstrap(knn, results[backend][1], knn, results[backend][0], count)
            rows.append((f"{backend} seed 1 − seed 0", a - b, error))
    print("| comparison | kNN difference (points) | standard error (paired bootstrap over videos) | within 2 SE |")
    print("|---|---|---|---|")
    for name, difference, error in rows:
        within = abs(difference) <= 2 * error
        print(f"| {name} | {100 * difference:+.1f} | {100 * error:.1f} | {'yes' if within else 'no'} |")
        record["differences"].append({"comparison": name, "difference": difference, "standard_error": error,
                                      "within_two_se": within})
    if len(args.backends) == 2 and args.seeds >= 2:
        import numpy as np

        first, second = args.backends
        knn_of = {backend: np.array([result.knn for result in results[backend]]) for backend in args.backends}
        differences = knn_of[second] - knn_of[first]
        error = float(np.std(differences, ddof=1) / np.sqrt(len(differences)))
        within = abs(float(differences.mean())) <= 2 * error
        print(f"\n| backend | kNN per seed | mean ± SE over seeds |\n|---|---|---|")
        for backend in args.backends:
            values = knn_of[backend]
            print(f"| {backend} | {' / '.join(f'{100 * v:.1f}' for v in values)} | "
                  f"{100 * values.mean():.1f} ± {100 * values.std(ddof=1) / np.sqrt(len(values)):.1f} |")
        print(f"\n{second} − {first} over {len(differences)} seeds: {100 * differences.mean():+.1f} ± {100 * error:.1f} "
              f"points: {'the same kNN within the seed noise' if within else 'NOT within two standard errors'}")
        record["over_seeds"] = {"difference": float(differences.mean()), "standard_error": error,
                                "within_two_se": within,
                                "knn": {backend: knn_of[backend].tolist() for backend in args.backends}}
    (out / "backend_knn.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
