"""Batch prediction with Ray Data: images/s of 2 actors against 1, through `cvengine.predict --backend ray`.

    python benchmarks/bench_batch_predict.py                     # CPU, tiny RT-DETR, 256 images
    python benchmarks/bench_batch_predict.py --images 2048 --repeats 3

A tiny random-init RT-DETR is trained for one epoch on the digits demo data (to get a model folder
as a run writes it); its val images are copied up to `--images` files in sub-folders. Both settings
predict the same files in one Ray session (one CPU per actor), alternating, `--repeats` times:
images/s = images / wall time of `predict(..., backend="ray")`, which includes starting the actors and
loading the model in each (the fixed cost a user pays). The single-process `cvengine.predict` rate is
printed for context. Printed last: the 2-vs-1 ratio of the median images/s (ideal 2.0 on 2 free cores).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--family", default="rt_detr")
    args = parser.parse_args()

    import ray

    from cvengine.adapters.tiny import create_tiny
    from cvengine.data.demo import make_demo
    from cvengine.engine.loop import Engine
    from cvengine.predict import predict
    from cvengine.recipe import load_recipe

    root = Path(tempfile.mkdtemp(prefix="bench_batch_predict_"))
    try:
        make_demo(root / "data", task="detection", seed=0, num_train=16, num_val=16)
        model = create_tiny("detection", args.family, root / "model")
        recipe = load_recipe({
            "task": "detection",
            "model": {"name": str(model), "pretrained": True},
            "data": {"root": str(root / "data"), "num_workers": 0, "train": {"images": "train/images", "annotations": "train/annotations.json"},
                     "val": {"images": "val/images", "annotations": "val/annotations.json"}},
            "augment": {"enabled": False},
            "train": {"max_epochs": 1, "output_dir": str(root / "runs")},
        })
        engine = Engine(recipe, tracker=None, progress=False)
        engine.fit()
        run_dir = str(engine.run_dir)
        sources = sorted((root / "data" / "val" / "images").glob("*.jpg"))
        images = root / "images"
        for k in range(args.images):
            target = images / f"part{k % 4}" / f"{k:06d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sources[k % len(sources)], target)

        started = time.perf_counter()
        predict(run_dir, [str(images)], str(root / "out-local"), batch_size=args.batch_size, render=False)
        local = args.images / (time.perf_counter() - started)

        cpus = os.cpu_count() or 2
        ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
        rates: dict[int, list[float]] = {1: [], 2: []}
        for repeat in range(args.repeats):
            for actors in (1, 2):
                started = time.perf_counter()
                predict(run_dir, [str(images)], str(root / f"out-{actors}-{repeat}"), batch_size=args.batch_size, render=False, backend="ray", actors=actors)
                rates[actors].append(args.images / (time.perf_counter() - started))
        ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"{args.images} images, batch {args.batch_size}, {args.family}, {os.cpu_count()} CPUs")
    print(f"single process (cvengine.predict):  {local:8.1f} images/s")
    print(f"Ray Data, 1 actor:                  {one:8.1f} images/s  (runs: {', '.join(f'{r:.1f}' for r in rates[1])})")
    print(f"Ray Data, 2 actors:                 {two:8.1f} images/s  (runs: {', '.join(f'{r:.1f}' for r in rates[2])})")
    print(f"ratio 2 actors / 1 actor: {two / one:.2f}")


if __name__ == "__main__":
    main()
