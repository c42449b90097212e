"""Inference images/s on CPU: ONNX Runtime on the exported graph against PyTorch on the same model
and the same pre-processed batches (the adapter's resize/normalise, done once, outside the clock).

    python benchmarks/bench_onnx.py                       # tiny random YOLOS, batch 4, one thread
    python benchmarks/bench_onnx.py --family detr --batch-size 2 --threads 2

The model is a small random-init checkpoint of the family (no hub), exported with
`cvengine.serving.onnx.export_onnx` (parity-checked). Repetitions alternate A/B in one process;
each is `--steps` forward passes. Reported: median images/s of each and the median per-repetition ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="yolos")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    from cvengine.adapters.tiny import create_tiny
    from cvengine.serving.onnx import export_onnx
    from cvengine.serving.predictor import Predictor

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = create_tiny("detection", args.family, os.path.join(tmp, "model"))
        summary = export_onnx(str(model_dir), os.path.join(tmp, "onnx"))
        predictor = Predictor(model_dir, device="cpu")
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(args.batch_size)]
        inputs = predictor.adapter.model_inputs(predictor.batch_of(images), with_labels=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(summary["path"], options, providers=["CPUExecutionProvider"])
        feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}

        def run_torch():
            with torch.inference_mode():
                predictor.model(**inputs)

        def run_onnx():
            session.run(None, feeds)

        for fn in (run_torch, run_onnx):  # warm-up
            fn()
        rates = {"pytorch": [], "onnxruntime": []}
        for _ in range(args.repeats):
            for name, fn in (("pytorch", run_torch), ("onnxruntime", run_onnx)):
                start = time.perf_counter()
                for _ in range(args.steps):
                    fn()
                rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))
        ratios = [o / t for o, t in zip(rates["onnxruntime"], rates["pytorch"])]
        size = tuple(inputs["pixel_values"].shape[2:])
        print(f"{args.family} tiny, batch {args.batch_size} at {size[0]}x{size[1]}, {args.threads} thread(s); exporter {summary['exporter']}, max abs diff {summary['max_abs_diff']:.2g}")
        print(f"pytorch      {statistics.median(rates['pytorch']):8.1f} images/s")
        print(f"onnxruntime  {statistics.median(rates['onnxruntime']):8.1f} images/s")
        print(f"ratio onnxruntime/pytorch: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
