"""Panoptic quality (PQ, SQ, RQ) exactly as the COCO panopticapi computes it (`pq_compute`).

Per image, a ground-truth and a predicted segment of the same category match when their IoU > 0.5,
where the union leaves out the predicted pixels that fall on void (id 0, unlabelled) ground truth.
Crowd ground-truth segments are never matched; an unmatched predicted segment whose pixels lie
more than half on void or on a crowd region of its own category is not a false positive.
Per category: PQ = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ = sum(IoU)/TP, RQ = TP/(TP + FP/2 + FN/2);
"all", "things" and "stuff" average over the categories that occur (TP + FP + FN > 0).

Segment maps are (H, W) integer arrays of segment ids; COCO panoptic PNGs store them as RGB with
id = R + 256 G + 256² B (`rgb_to_id` / `id_to_rgb`).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np

from cvengine.errors import DataError

VOID = 0
# Ground-truth and predicted ids are packed into one uint64 as gt * OFFSET + pred (panopticapi's trick).
OFFSET = 256 * 256 * 256
MATCH_IOU = 0.5


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int64 segment ids."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) integer segment ids -> (H, W, 3) uint8."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256) % 256], axis=-1).astype(np.uint8)


class PQStat:
    """Per-category sums over images: IoU of matches, TP, FP, FN."""

    def __init__(self):
        self.iou = defaultdict(float)
        self.tp = defaultdict(int)
        self.fp = defaultdict(int)
        self.fn = defaultdict(int)

    def update(
        self,
        gt_ids: np.ndarray,
        gt_segments: dict[int, tuple[int, bool]],
        pred_ids: np.ndarray,
        pred_segments: dict[int, int],
    ) -> None:
        """One image. gt_ids / pred_ids: (H, W) segment ids (0 = void / no segment);
        gt_segments: id -> (category_id, iscrowd); pred_segments: id -> category_id. Segments listed
        but absent from the map have area 0 (as in panopticapi, which rejects them beforehand)."""
        if gt_ids.shape != pred_ids.shape:
            raise DataError(f"ground-truth map {gt_ids.shape} and prediction map {pred_ids.shape} differ in size")
        pairs = gt_ids.astype(np.uint64).ravel() * np.uint64(OFFSET) + pred_ids.astype(np.uint64).ravel()
        keys, counts = np.unique(pairs, return_counts=True)
        gt_of = (keys // np.uint64(OFFSET)).astype(np.int64)
        pred_of = (keys % np.uint64(OFFSET)).astype(np.int64)
        counts = counts.astype(np.int64)

        gt_area: dict[int, int] = defaultdict(int)
        pred_area: dict[int, int] = defaultdict(int)
        for g, p, c in zip(gt_of.tolist(), pred_of.tolist(), counts.tolist()):
            gt_area[g] += c
            pred_area[p] += c
        void_overlap = {p: c for g, p, c in zip(gt_of.tolist(), pred_of.tolist(), counts.tolist()) if g == VOID}

        gt_matched, pred_matched = set(), set()
        for g, p, inter in zip(gt_of.tolist(), pred_of.tolist(), counts.tolist()):
            if g not in gt_segments or p not in pred_segments:
                continue
            category, crowd = gt_segments[g]
            if crowd or category != pred_segments[p]:
                continue
            union = pred_area[p] + gt_area[g] - inter - void_overlap.get(p, 0)
            iou = inter / union
            if iou > MATCH_IOU:
                self.tp[category] += 1
                self.iou[category] += iou
                gt_matched.add(g)
                pred_matched.add(p)

        crowd_by_category: dict[int, int] = {}
        for g, (category, crowd) in gt_segments.items():
            if crowd:
                crowd_by_category[category] = g  # panopticapi keeps one crowd segment per category
                continue
            if g not in gt_matched:
                self.fn[category] += 1

        if crowd_by_category:
            pair_count = {(g, p): c for g, p, c in zip(gt_of.tolist(), pred_of.tolist(), counts.tolist())}
        for p, category in pred_segments.items():
            if p in pred_matched:
                continue
            ignored = void_overlap.get(p, 0)
            if category in crowd_by_category:
                ignored += pair_count.get((crowd_by_category[category], p), 0)
            area = pred_area.get(p, 0)
            if area > 0 and ignored / area > 0.5:
                continue
            self.fp[category] += 1

    def merge(self, other: "PQStat") -> None:
        for mine, theirs in ((self.iou, other.iou), (self.tp, other.tp), (self.fp, other.fp), (self.fn, other.fn)):
            for k, v in theirs.items():
                mine[k] += v

    def per_category(self, category_id: int) -> dict[str, float]:
        tp, fp, fn, iou = self.tp[category_id], self.fp[category_id], self.fn[category_id], self.iou[category_id]
        if tp + fp + fn == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
        denominator = tp + 0.5 * fp + 0.5 * fn
        return {"pq": iou / denominator, "sq": iou / tp if tp else 0.0, "rq": tp / denominator, "n": 1}

    def average(self, categories: list[dict]) -> dict[str, float]:
        """{pq, sq, rq, pq_things, …, pq_stuff, …, n, n_things, n_stuff} over `categories`
        (COCO panoptic categories with `id` and `isthing`)."""
        out: dict[str, float] = {}
        for suffix, keep in (("", lambda c: True), ("_things", lambda c: bool(c.get("isthing", 1))), ("_stuff", lambda c: not c.get("isthing", 1))):
            rows = [self.per_category(int(c["id"])) for c in categories if keep(c)]
            n = sum(r["n"] for r in rows)
            for key in ("pq", "sq", "rq"):
                out[key + suffix] = float(sum(r[key] for r in rows) / n) if n else 0.0
            out["n" + suffix] = n
        return out


def read_panoptic_png(path: str) -> np.ndarray:
    """A COCO panoptic PNG -> (H, W) int64 segment ids."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return rgb_to_id(np.asarray(image.convert("RGB")))
    except FileNotFoundError:
        raise DataError(f"panoptic PNG not found: {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read panoptic PNG {path}: {err}") from None


def _read_json(path) -> dict:
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DataError(f"panoptic json not found: {path}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None


def evaluate_panoptic(gt_json: str | os.PathLike, gt_folder: str | os.PathLike, pred_json: str | os.PathLike, pred_folder: str | os.PathLike) -> dict[str, float]:
    """PQ of a COCO panoptic prediction (json + PNG folder) against the ground truth, as panopticapi's
    `pq_compute(gt_json, pred_json, gt_folder, pred_folder)`; keys pq, sq, rq, pq_things, …"""
    gt, pred = _read_json(gt_json), _read_json(pred_json)
    pred_by_image = {a["image_id"]: a for a in pred["annotations"]}
    categories = {int(c["id"]): c for c in gt["categories"]}
    stat = PQStat()
    for gt_ann in gt["annotations"]:
        image_id = gt_ann["image_id"]
        if image_id not in pred_by_image:
            raise DataError(f"{pred_json}: no prediction for image id {image_id}")
        pred_ann = pred_by_image[image_id]
        gt_ids = read_panoptic_png(os.path.join(gt_folder, gt_ann["file_name"]))
        pred_ids = read_panoptic_png(os.path.join(pred_folder, pred_ann["file_name"]))
        pred_segments = {}
        for s in pred_ann["segments_info"]:
            if int(s["category_id"]) not in categories:
                raise DataError(f"{pred_json}: image id {image_id}: segment {s['id']} has unknown category_id {s['category_id']}")
            pred_segments[int(s["id"])] = int(s["category_id"])
        present = set(np.unique(pred_ids).tolist()) - {VOID}
        if present - pred_segments.keys():
            raise DataError(f"{pred_json}: image id {image_id}: segment ids {sorted(present - pred_segments.keys())[:5]} are in the PNG but not in segments_info")
        if pred_segments.keys() - present:
            raise DataError(f"{pred_json}: image id {image_id}: segments {sorted(pred_segments.keys() - present)[:5]} of segments_info are not in the PNG")
        gt_segments = {int(s["id"]): (int(s["category_id"]), bool(s.get("iscrowd", 0))) for s in gt_ann["segments_info"]}
        stat.update(gt_ids, gt_segments, pred_ids, pred_segments)
    return stat.average(list(categories.values()))
