"""Ray Train scaling of the engine: 2 workers against 1 on the same global batch, and the fixed cost
of a Ray run.

    python benchmarks/bench_ray_scaling.py                                   # CPU, tiny RT-DETR
    python benchmarks/bench_ray_scaling.py --global-batch 32 --epochs 4 --gpu   # one GPU per worker

Both runs train the same recipe (digits demo data, a small random-init RT-DETR, no augmentation, no
loader workers) through `fit_with_ray` in one Ray session: 1 worker at batch B, then 2 workers at
batch B/2 each — the same global batch, so the same number of optimizer steps. Measured per run:
- steady images/s: training images per epoch / epoch seconds, over the epochs after the first; the
  epoch seconds are the engine's own (metrics.json "history") and include the same evaluation of the
  val split in both runs;
- fixed cost: wall time of `fit_with_ray` minus the sum of its epoch times (actors, process group,
  model load, MLflow run, checkpoint copies to Ray storage).
Printed: both figures per run and the 2-vs-1 ratio of steady images/s (ideal: 2.0 with 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def run(recipe_dict: dict, workers: int, per_worker_batch: int, gpu: bool, cpus_per_worker: float) -> dict:
    from cvengine.distributed.ray import fit_with_ray
    from cvengine.recipe import load_recipe

    data = json.loads(json.dumps(recipe_dict))
    data["data"]["batch_size"] = per_worker_batch
    data["tracking"]["run_name"] = f"workers-{workers}"
    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if gpu else {})}
    data["distributed"] = {"backend": "ray", "num_workers": workers, "use_gpu": gpu, "resources_per_worker": resources}
    started = time.perf_counter()
    result = fit_with_ray(load_recipe(data))
    wall = time.perf_counter() - started
    history = json.loads((Path(result["run_dir"]) / "metrics.json").read_text())["history"]
    epoch_seconds = [row["seconds"] for row in history]
    return {"wall": wall, "epoch_seconds": epoch_seconds, "fixed": wall - sum(epoch_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--family", default="rt_detr")
    args = parser.parse_args()

    import ray

    from cvengine.adapters.tiny import create_tiny
    from cvengine.data.demo import make_demo

    root = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    make_demo(root / "data", task="detection", seed=0, num_train=args.num_train, num_val=8)
    model = create_tiny("detection", args.family, root / "model")
    recipe = {
        "task": "detection",
        "model": {"name": str(model), "pretrained": False},
        "data": {"root": str(root / "data"), "num_workers": 0, "train": {"images": "train/images", "annotations": "train/annotations.json"}, "val": {"images": "val/images", "annotations": "val/annotations.json"}},
        "augment": {"enabled": False},
        "train": {"max_epochs": args.epochs, "lr": 1e-3, "output_dir": str(root / "runs"), "log_every_steps": 1000},
        "tracking": {"experiment": "bench"},
    }
    cpus = os.cpu_count() or 2
    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=True, object_store_memory=200 * 2**20, log_to_driver=False)
    init_seconds = time.perf_counter() - started
    one = run(recipe, 1, args.global_batch, args.gpu, cpus_per_worker=1)
    two = run(recipe, 2, args.global_batch // 2, args.gpu, cpus_per_worker=1)
    ray.shutdown()

    def steady_rate(r):
        later = r["epoch_seconds"][1:] or r["epoch_seconds"]
        return args.num_train * len(later) / sum(later)

    print(f"ray.init (local, dashboard on): {init_seconds:.1f} s; {args.num_train} train images, global batch {args.global_batch}, {args.epochs} epochs, {cpus} CPUs" + (", 1 GPU per worker" if args.gpu else ""))
    print(f"{'workers':>7}  {'fit wall s':>10}  {'fixed cost s':>12}  {'epoch s (train+eval)':>28}  {'steady img/s':>12}")
    for n, r in ((1, one), (2, two)):
        epochs = ", ".join(f"{s:.1f}" for s in r["epoch_seconds"])
        print(f"{n:>7}  {r['wall']:>10.1f}  {r['fixed']:>12.1f}  {epochs:>28}  {steady_rate(r):>12.1f}")
    print(f"ratio 2 workers / 1 worker, steady images/s (epochs incl. evaluation): {steady_rate(two) / steady_rate(one):.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
