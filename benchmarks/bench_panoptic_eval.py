"""Panoptic quality over 500 synthetic images: cvengine's PQStat (one np.unique over packed
ground-truth/prediction id pairs per image, as panopticapi does) against the panopticapi formula
written plainly (a boolean mask per segment, IoU per ground-truth/prediction pair). Same process,
same maps; both must give the same PQ.

    python benchmarks/bench_panoptic_eval.py [--images 500] [--size 240 320] [--repeats 3] [--seed 0]

Each image: a stuff background in a few horizontal bands (3 stuff categories), 6-12 rectangular
things of 8 categories (one in ten crowd), a void border; the prediction shifts and resizes things,
drops some, adds spurious ones and relabels a few.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import numpy as np  # noqa: E402

from cvengine.metrics.panoptic import PQStat  # noqa: E402

CATEGORIES = [{"id": c, "isthing": 1} for c in range(1, 9)] + [{"id": c, "isthing": 0} for c in (20, 21, 22)]


def make_image(rng, h, w):
    gt = np.zeros((h, w), np.int64)
    pred = np.zeros((h, w), np.int64)
    gt_segments, pred_segments = {}, {}
    bands = np.linspace(0, h, 4).astype(int)
    for k, cat in enumerate((20, 21, 22)):
        gt[bands[k] : bands[k + 1]] = k + 1
        gt_segments[k + 1] = (cat, False)
        shift = int(rng.integers(-10, 11))
        pred[max(0, bands[k] + shift) : bands[k + 1] + shift] = k + 1
        pred_segments[k + 1] = cat
    for s in range(int(rng.integers(6, 13))):
        sid, cat = 10 + s, int(rng.integers(1, 9))
        y, x = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
        bh, bw = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        gt[y : y + bh, x : x + bw] = sid
        gt_segments[sid] = (cat, bool(rng.random() < 0.1))
        if rng.random() < 0.8:
            dy, dx = rng.integers(-4, 5, 2)
            pred[max(0, y + dy) : y + bh + dy, max(0, x + dx) : x + bw + dx] = sid
            pred_segments[sid] = cat if rng.random() < 0.9 else int(rng.integers(1, 9))
    for s in range(int(rng.integers(0, 4))):
        sid = 100 + s
        y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
        pred[y : y + 15, x : x + 15] = sid
        pred_segments[sid] = int(rng.integers(1, 9))
    gt[:4], gt[:, :4] = 0, 0  # void border
    present = set(np.unique(pred).tolist())
    pred_segments = {k: v for k, v in pred_segments.items() if k in present}
    present_gt = set(np.unique(gt).tolist())
    gt_segments = {k: v for k, v in gt_segments.items() if k in present_gt}
    return gt, gt_segments, pred, pred_segments


def main() -> None:
    from test_instance_panoptic import plain_pq_stats, stats_to_pq

    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--size", type=int, nargs=2, default=(240, 320))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    images = [make_image(rng, *args.size) for _ in range(args.images)]

    t_cv, t_ref = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        stat = PQStat()
        for gt, gs, pred, ps in images:
            stat.update(gt, gs, pred, ps)
        ours = stat.average(CATEGORIES)
        t_cv.append(time.perf_counter() - start)
        start = time.perf_counter()
        totals: dict = {}
        for gt, gs, pred, ps in images:
            plain_pq_stats(gt, gs, pred, ps, totals)
        reference = stats_to_pq(totals, CATEGORIES)
        t_ref.append(time.perf_counter() - start)
    for key in ("pq", "pq_things", "pq_stuff"):
        assert abs(ours[key] - reference[key]) < 1e-12, (key, ours[key], reference[key])
    print(f"{args.images} images of {args.size[0]}x{args.size[1]}: PQ {ours['pq']:.4f} (things {ours['pq_things']:.4f}, stuff {ours['pq_stuff']:.4f}); cvengine {min(t_cv):.3f} s, plain formula {min(t_ref):.3f} s")
    print(f"ratio cvengine/plain time: {min(t_cv) / min(t_ref):.2f}")


if __name__ == "__main__":
    main()
