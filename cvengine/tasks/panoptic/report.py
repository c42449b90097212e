"""The panoptic segmentation report: PQ / SQ / RQ overall, for things and stuff and per class (the
evaluator's formula, `cvengine/metrics/panoptic.py`), and the worst and best images by their own PQ
with ground truth and prediction side by side."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cvengine.tasks.panoptic.dataset import PanopticIndex
from cvengine.metrics.panoptic import PQStat, read_panoptic_png
from cvengine.html_report import jpeg_of_image, table, write_page

GALLERY_SIZE = 6


def _overlay(image: np.ndarray, segment_map: np.ndarray, segments: list[dict], class_names: list[str]) -> np.ndarray:
    from cvengine.tasks.panoptic.render import render

    return render(image, {"segment_map": segment_map, "segments": segments}, class_names)


def write_panoptic_report(index: PanopticIndex, predictions_path: str | os.PathLike, out_dir: str | os.PathLike, title: str = "") -> str:
    """Write `out_dir/report.html` for COCO panoptic predictions (`predictions_path` json, PNGs in the
    folder named after it) against `index`."""
    from cvengine.data.images import read_image

    predictions_path = Path(predictions_path)
    document = json.loads(predictions_path.read_text())
    folder = predictions_path.with_suffix("")
    by_image = {int(a["image_id"]): a for a in document["annotations"]}
    title = title or f"Panoptic segmentation report — {Path(index.annotations_path).name}"
    cat_ids = index.label_map.category_ids
    categories = index.label_map.categories
    total, per_image = PQStat(), []
    for k, image_id in enumerate(index.image_ids.tolist()):
        gt_segments = {sid: (int(cat_ids[label]), crowd) for sid, label, crowd in index.segments[k]}
        annotation = by_image.get(image_id)
        gt_ids = index.segment_map(k)
        pred_ids = read_panoptic_png(str(folder / annotation["file_name"])) if annotation else np.zeros_like(gt_ids)
        pred_segments = {int(s["id"]): int(s["category_id"]) for s in (annotation["segments_info"] if annotation else [])}
        one = PQStat()
        one.update(gt_ids, gt_segments, pred_ids, pred_segments)
        total.merge(one)
        per_image.append(one.average(categories)["pq"])
    averages = total.average(categories)
    sections = [f'<p class="note">Ground truth: {index.annotations_path} ({len(index)} images); predictions: {predictions_path} ({len(by_image)} images).</p>']
    summary = [[name, averages.get(f"pq{suffix}", float("nan")), averages.get(f"sq{suffix}", float("nan")), averages.get(f"rq{suffix}", float("nan"))] for name, suffix in (("all", ""), ("things", "_things"), ("stuff", "_stuff"))]
    sections.append("<h2>Panoptic quality</h2>" + table(["classes", "PQ", "SQ", "RQ"], summary))
    rows = []
    for label, (cid, name) in enumerate(zip(cat_ids.tolist(), index.class_names)):
        c = total.per_category(int(cid))
        rows.append([name, int(cid), "thing" if index.isthing[label] else "stuff", total.tp[int(cid)], total.fp[int(cid)], total.fn[int(cid)], c["pq"], c["sq"], c["rq"]])
    sections.append("<h2>Per-class PQ / SQ / RQ</h2>" + table(["class", "category id", "kind", "TP", "FP", "FN", "PQ", "SQ", "RQ"], rows))

    order = np.argsort(np.array(per_image), kind="stable")
    count = min(GALLERY_SIZE, (len(order) + 1) // 2)
    worst = order[:count].tolist()
    best = [i for i in order[::-1][:count].tolist() if i not in worst]

    def gallery(positions):
        figures = []
        for k in positions:
            image = read_image(index.image_path(k))
            gt = _overlay(image, index.segment_map(k), [{"id": sid, "label": label, "score": 1.0} for sid, label, crowd in index.segments[k] if not crowd], index.class_names)
            annotation = by_image.get(int(index.image_ids[k]))
            segments = [{"id": int(s["id"]), "label": index.label_map.label_of(s["category_id"]), "score": float(s.get("score", 1.0))} for s in (annotation["segments_info"] if annotation else [])]
            pred_map = read_panoptic_png(str(folder / annotation["file_name"])) if annotation else np.zeros(image.shape[:2], np.int64)
            predicted = _overlay(image, pred_map, segments, index.class_names)
            caption = f"{index.file_names[k]} — PQ {per_image[k]:.2f}, {len(index.segments[k])} GT segments, {len(segments)} predicted (left: ground truth, right: prediction)"
            figures.append(f'<figure><img src="{jpeg_of_image(np.concatenate([gt, predicted], axis=1), max_side=540)}" alt="{caption}"><figcaption>{caption}</figcaption></figure>')
        return "".join(figures)

    sections.append("<h2>Worst images</h2>" + gallery(worst))
    sections.append("<h2>Best images</h2>" + gallery(best))
    return write_page(out_dir, title, sections)
