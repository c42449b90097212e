"""Evaluation throughput: images/s of `Engine.evaluate` (forward with labels for the split's loss,
post-processing to original-image predictions, metric states, metrics) against forward-only images/s
over the same loader and split (the model's forward without labels, nothing kept).

    python benchmarks/bench_eval_throughput.py                                  # detection, tiny DETR
    python benchmarks/bench_eval_throughput.py --task semantic_segmentation --family segformer

A/B repetitions alternate in one process; the ratio is computed from this process's CPU time on CPU
(robust to other processes sharing the cores) and from wall time on CUDA. The shortfall from 1.0 is
what post-processing, the loss and the metrics cost.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="detection")
    p.add_argument("--family", default="detr")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--canvas", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from cvengine.adapters.tiny import create_tiny
    from cvengine.data.demo import make_demo
    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    clock = (lambda: time.perf_counter()) if cuda else time.process_time
    with tempfile.TemporaryDirectory(prefix="cvengine-bench-eval-") as workdir:
        demo = make_demo(os.path.join(workdir, "data"), task=args.task, num_train=1, num_val=args.images, canvas=(args.canvas, args.canvas))
        num_labels = 11 if args.task in ("semantic_segmentation", "panoptic_segmentation") else 10
        checkpoint = create_tiny(args.task, args.family, os.path.join(workdir, "model"), num_labels=num_labels)
        splits = {s: {"images": demo["splits"][s]["images"], "annotations": demo["splits"][s]["annotations"]} for s in ("train", "val")}
        recipe = load_recipe({"task": args.task, "model": {"name": str(checkpoint)}, "data": {"batch_size": args.batch_size, "num_workers": 0, **splits}, "train": {"output_dir": os.path.join(workdir, "runs")}})
        engine = Engine(recipe, checkpoint=None, tracker=None, run_dir=os.path.join(workdir, "run"), progress=False)
        engine.untrained_head = []  # random weights are fine for timing
        _, loader = engine._loader("val", train=False)

        @torch.inference_mode()
        def forward_only():
            engine.model.eval()
            for batch in loader:
                engine.model(**engine.adapter.model_inputs(batch, with_labels=False))

        evaluate_rates, forward_rates = [], []
        for repeat in range(args.repeats + 1):  # the first pair warms up
            for run, rates in ((lambda: engine.evaluate("val"), evaluate_rates), (forward_only, forward_rates)):
                sync()
                started = clock()
                run()
                sync()
                if repeat:
                    rates.append(args.images / (clock() - started))
        ratio = statistics.median(e / f for e, f in zip(evaluate_rates, forward_rates))
        print(f"{args.task} {args.family}, {args.images} images of {args.canvas}x{args.canvas}, batch {args.batch_size}, {'cuda' if cuda else 'cpu'}: evaluate {statistics.median(evaluate_rates):.1f} images/s, forward only {statistics.median(forward_rates):.1f} images/s ({'wall' if cuda else 'CPU time'})")
        print(f"ratio evaluate/forward_only images_per_s: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
