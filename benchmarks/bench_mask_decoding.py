"""COCO segmentation -> binary mask decoding: cvengine (CocoIndex.masks -> data/masks.py) against
pycocotools' `COCO.annToMask`, on the same synthetic annotations, in one process.

    python benchmarks/bench_mask_decoding.py [--images 200] [--per-image 8] [--repeats 3] [--seed 0]

Images of 480x640 with `--per-image` objects each: half polygons (1-3 polygons of 8-40 vertices),
half compressed RLE strings; about 2% uncompressed-RLE crowd regions. Both sides decode every mask of
every image (cvengine per image with `CocoIndex.masks(i, include_crowd=True)`, pycocotools per
annotation) and must give identical masks; the best of --repeats runs is kept for each.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from cvengine.data.coco import CocoIndex  # noqa: E402

H, W = 480, 640


def _polygon(rng, cx, cy, r):
    n = int(rng.integers(8, 41))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.5, 1.0, n)
    xs = np.clip(cx + radii * np.cos(angles), 0, W - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, H - 1)
    return np.stack([xs, ys], 1).ravel().round(2).tolist()


def make_dataset(rng, num_images: int, per_image: int) -> dict:
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": H, "width": W})
        for k in range(per_image):
            cx, cy, r = rng.uniform(60, W - 60), rng.uniform(60, H - 60), rng.uniform(10, 60)
            crowd = rng.random() < 0.02
            if crowd:
                m = np.zeros((H, W), np.uint8)
                m[int(cy - r) : int(cy + r), int(cx - r) : int(cx + r)] = 1
                runs, flat, last, count = [], m.ravel(order="F"), 0, 0
                for v in flat:  # uncompressed RLE, starting with a run of zeros
                    if v != last:
                        runs.append(count)
                        count, last = 0, v
                    count += 1
                runs.append(count)
                seg = {"size": [H, W], "counts": runs}
            elif k % 2 == 0:
                seg = [_polygon(rng, cx + dx, cy + dy, r / 2) for dx, dy in rng.uniform(-r / 2, r / 2, (int(rng.integers(1, 4)), 2))]
            else:
                rle = mask_utils.merge(mask_utils.frPyObjects([_polygon(rng, cx, cy, r)], H, W))
                seg = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": [cx - r, cy - r, 2 * r, 2 * r], "area": float(np.pi * r * r), "iscrowd": int(crowd), "segmentation": seg})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--per-image", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = make_dataset(np.random.default_rng(args.seed), args.images, args.per_image)
    index = CocoIndex(data, "synthetic.json", ".", keep_segmentation=True)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    ann_ids = [coco.getAnnIds(imgIds=[int(i)]) for i in index.image_ids]

    t_cv, t_ref = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = [index.masks(i, include_crowd=True) for i in range(len(index))]
        t_cv.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = [[coco.annToMask(coco.anns[a]) for a in ids] for ids in ann_ids]
        t_ref.append(time.perf_counter() - start)
    # CocoIndex orders an image's annotations as the file does, as getAnnIds does.
    for o, t in zip(ours, theirs):
        assert len(o) == len(t) and all(np.array_equal(a, b) for a, b in zip(o, t)), "masks differ"
    n = sum(len(t) for t in theirs)
    print(f"{n} masks of {H}x{W}: cvengine {min(t_cv):.3f} s, pycocotools annToMask {min(t_ref):.3f} s")
    print(f"ratio cvengine/pycocotools time: {min(t_cv) / min(t_ref):.2f}")


if __name__ == "__main__":
    main()
