"""COCO bbox evaluation at val2017 scale: cvengine's evaluate_coco against pycocotools alone.

    python benchmarks/bench_coco_eval.py [--images 5000] [--dets-per-image 100] [--repeats 1] [--seed 0]

Synthetic data shaped like COCO val2017: 5,000 images of ~640x480, ~36k ground-truth boxes (about 1%
crowd, COCO's mix of small/medium/large) over 80 categories with COCO's ids (1..90 with gaps), and 100
detections per image, a third of them jittered copies of ground-truth boxes.

(a) pycocotools alone: COCO from the ground-truth dict, loadRes from a list of result dicts (built
    before the clock starts), evaluate, accumulate, summarize.
(b) cvengine: ground truth through coco_from_dict, detections_to_array from per-image numpy arrays
    (what a model's post-processing yields), then evaluate_coco on the (N, 7) array.
Both run in this process, one after the other (order alternating over --repeats, best time kept),
and must give the same 12 numbers. Both sides are single-threaded, so the summary ratio is of
process CPU time, which other load on the machine disturbs far less than wall time (printed too). evaluate_coco pauses Python's cyclic garbage collector while it
builds and matches the result records; pycocotools alone runs with the collector as it is.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from cvengine.metrics.coco import COCO_METRIC_KEYS, coco_from_dict, detections_to_array, evaluate_coco  # noqa: E402

# The 80 category ids of COCO instances files.
COCO_CATEGORY_IDS = [c for c in range(1, 91) if c not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def make_ground_truth(rng: np.random.Generator, num_images: int, boxes_per_image: float = 7.3) -> dict:
    images, annotations = [], []
    counts = rng.poisson(boxes_per_image, size=num_images)
    for i in range(num_images):
        w, h = int(rng.choice([640, 480, 500, 427])), int(rng.choice([480, 640, 375, 427]))
        images.append({"id": 100000 + 3 * i, "file_name": f"{i:012d}.jpg", "width": w, "height": h})
        n = int(counts[i])
        # sqrt(area) log-uniform over 8..400 px gives roughly COCO's 41/34/24 % small/medium/large.
        side = np.exp(rng.uniform(np.log(8), np.log(400), size=n))
        aspect = np.exp(rng.normal(0, 0.5, size=n))
        bw = np.minimum(side * np.sqrt(aspect), w - 1)
        bh = np.minimum(side / np.sqrt(aspect), h - 1)
        x = rng.uniform(0, w - bw)
        y = rng.uniform(0, h - bh)
        cats = rng.choice(COCO_CATEGORY_IDS, size=n)
        crowd = rng.random(n) < 0.01
        for k in range(n):
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": images[-1]["id"],
                "category_id": int(cats[k]),
                "bbox": [float(x[k]), float(y[k]), float(bw[k]), float(bh[k])],
                "area": float(bw[k] * bh[k]),
                "iscrowd": int(crowd[k]),
            })
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in COCO_CATEGORY_IDS]
    return {"info": {}, "images": images, "annotations": annotations, "categories": categories}


def make_detections(rng: np.random.Generator, gt: dict, per_image: int):
    """Per image: boxes (D, 4) float32 xyxy absolute, scores (D,) float32, COCO category ids (D,) int64."""
    by_image: dict[int, list] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    image_ids, boxes, scores, cats = [], [], [], []
    for im in gt["images"]:
        w, h = im["width"], im["height"]
        anns = by_image.get(im["id"], [])
        n_match = min(per_image // 3, 3 * len(anns))
        b = np.empty((per_image, 4))
        c = rng.choice(COCO_CATEGORY_IDS, size=per_image)
        if n_match:
            src = np.array([anns[k % len(anns)]["bbox"] for k in range(n_match)])
            src_cat = np.array([anns[k % len(anns)]["category_id"] for k in range(n_match)])
            jitter = rng.normal(0, 0.1, size=(n_match, 4)) * src[:, [2, 3, 2, 3]]
            b[:n_match, :2] = src[:, :2] + jitter[:, :2]
            b[:n_match, 2:] = src[:, :2] + src[:, 2:] + jitter[:, 2:]
            c[:n_match] = np.where(rng.random(n_match) < 0.8, src_cat, c[:n_match])
        m = per_image - n_match
        side = np.exp(rng.uniform(np.log(8), np.log(400), size=m))
        x0, y0 = rng.uniform(0, w, size=m), rng.uniform(0, h, size=m)
        b[n_match:] = np.stack([x0, y0, x0 + side, y0 + side * np.exp(rng.normal(0, 0.5, size=m))], axis=1)
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
        image_ids.append(im["id"])
        boxes.append(b.astype(np.float32))
        scores.append(rng.random(per_image).astype(np.float32))
        cats.append(c.astype(np.int64))
    return image_ids, boxes, scores, cats


def run_pycocotools(gt: dict, results: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def run_cvengine(gt: dict, image_ids, boxes, scores, cats) -> dict:
    coco_gt = coco_from_dict(gt)
    arr = detections_to_array(image_ids, boxes, scores, cats)
    return evaluate_coco(coco_gt, arr, iou_type="bbox")


def runs(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating the order; best time kept")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    gt = make_ground_truth(rng, args.images)
    image_ids, boxes, scores, cats = make_detections(rng, gt, args.dets_per_image)
    # The reference's input: result dicts with the same float64 values cvengine computes.
    arr = detections_to_array(image_ids, boxes, scores, cats)
    base_results = [{"image_id": int(r[0]), "bbox": r[1:5], "score": r[5], "category_id": int(r[6])} for r in arr.tolist()]
    n_gt = len(gt["annotations"])
    print(f"images {args.images}  ground-truth boxes {n_gt} (crowd {sum(a['iscrowd'] for a in gt['annotations'])})"
          f"  categories {len(gt['categories'])}  detections {len(base_results)}")

    t_ref, t_cv, c_ref, c_cv = [], [], [], []
    for r in range(args.repeats):
        # Alternate which side runs first, so neither always inherits the other's heap.
        for side in (("ref", "cv") if r % 2 == 0 else ("cv", "ref")):
            gc.collect()
            if side == "ref":
                # loadRes writes into the result dicts: give it fresh ones, built before the clock.
                results = [dict(d, bbox=list(d["bbox"])) for d in base_results]
                gc.collect()
                t0, c0 = time.perf_counter(), time.process_time()
                ref_stats = run_pycocotools(gt, results)
                t_ref.append(time.perf_counter() - t0)
                c_ref.append(time.process_time() - c0)
                del results
            else:
                t0, c0 = time.perf_counter(), time.process_time()
                metrics = run_cvengine(gt, image_ids, boxes, scores, cats)
                t_cv.append(time.perf_counter() - t0)
                c_cv.append(time.process_time() - c0)

    diff = max(abs(metrics[k] - float(v)) for k, v in zip(COCO_METRIC_KEYS, ref_stats))
    print(f"map {metrics['map']:.4f}  map_50 {metrics['map_50']:.4f}  mar_100 {metrics['mar_100']:.4f}"
          f"  max |cvengine - pycocotools| over the 12 stats: {diff:.1e}")
    if diff > 1e-9:
        raise SystemExit(f"cvengine and pycocotools disagree by {diff}")
    print(f"pycocotools alone: wall {min(t_ref):.2f} s (runs: {runs(t_ref)})  CPU {min(c_ref):.2f} s (runs: {runs(c_ref)})")
    print(f"cvengine (coco_from_dict + detections_to_array + evaluate_coco): wall {min(t_cv):.2f} s (runs: {runs(t_cv)})"
          f"  CPU {min(c_cv):.2f} s (runs: {runs(c_cv)})")
    print(f"ratio cvengine/pycocotools wall time: {min(t_cv) / min(t_ref):.2f}")
    print(f"ratio cvengine/pycocotools time: {min(c_cv) / min(c_ref):.2f}")


if __name__ == "__main__":
    main()
