"""COCO detection and instance-segmentation metrics, computed by pycocotools.

The matching, accumulation and summary are pycocotools' own (`COCOeval`); this module only feeds it:
it builds the ground-truth index from a dict without re-reading a file, turns detections held as
numpy arrays into COCO results, checks the results against the ground truth so that a bad id gives a
clear error instead of an assertion deep inside pycocotools, and keeps pycocotools' prints off stdout.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvengine.data.coco import gc_paused
from cvengine.errors import DataError

# Names of `COCOeval.stats`, in its order.
COCO_METRIC_KEYS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)

# What each key means, as pycocotools' summary states it (used by the CLI table).
COCO_METRIC_DESCRIPTIONS = {
    "map": "AP  IoU=0.50:0.95  area=all     maxDets=100",
    "map_50": "AP  IoU=0.50       area=all     maxDets=100",
    "map_75": "AP  IoU=0.75       area=all     maxDets=100",
    "map_small": "AP  IoU=0.50:0.95  area=small   maxDets=100",
    "map_medium": "AP  IoU=0.50:0.95  area=medium  maxDets=100",
    "map_large": "AP  IoU=0.50:0.95  area=large   maxDets=100",
    "mar_1": "AR  IoU=0.50:0.95  area=all     maxDets=1",
    "mar_10": "AR  IoU=0.50:0.95  area=all     maxDets=10",
    "mar_100": "AR  IoU=0.50:0.95  area=all     maxDets=100",
    "mar_small": "AR  IoU=0.50:0.95  area=small   maxDets=100",
    "mar_medium": "AR  IoU=0.50:0.95  area=medium  maxDets=100",
    "mar_large": "AR  IoU=0.50:0.95  area=large   maxDets=100",
}

IOU_TYPES = ("bbox", "segm")


@contextlib.contextmanager
def _quiet():
    # pycocotools prints progress from Python code (never from C), so redirecting sys.stdout is enough.
    with contextlib.redirect_stdout(io.StringIO()):
        yield




def _read_json(path: str | os.PathLike, what: str) -> Any:
    # Text mode: the file's bytes are freed once decoded, so the peak holds the text and the parsed
    # objects, not the bytes as well (one file size less than json.load on a binary handle).
    try:
        with open(path, encoding="utf-8-sig") as fh, gc_paused():
            return json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{what} path is a directory, not a JSON file: {path}") from None
    except OSError as err:
        raise DataError(f"cannot read {what} file {path}: {err.strerror or err}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not valid JSON (not UTF-8: {err.reason})") from None


def coco_from_dict(data: dict, source: str = "ground truth") -> COCO:
    """A pycocotools `COCO` index over an already-parsed COCO instances dict, without printing.

    The top-level dict and each annotation record are shallow-copied: evaluation writes into the
    annotation records (an `ignore` flag; polygons replaced by RLE for segm), and the caller's data
    must not change under it. `source` names the data in error messages (usually the file path).
    """
    if not isinstance(data, dict):
        raise DataError(f"{source}: top level must be a JSON object with images, annotations, categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source}: top-level '{key}' must be a list (COCO format); got {type(data.get(key)).__name__}")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"{source}: top-level 'annotations' must be a list")
    dataset = dict(data)
    try:
        with gc_paused():
            dataset["annotations"] = [dict(a) for a in annotations]
    except (TypeError, ValueError):
        bad = next(i for i, a in enumerate(annotations) if not isinstance(a, dict))
        raise DataError(f"{source}: annotation at position {bad} is not an object") from None
    coco = COCO()
    coco.dataset = dataset
    try:
        with _quiet(), gc_paused():
            coco.createIndex()
    except (KeyError, TypeError):
        raise DataError(f"{source}: {_first_bad_gt_record(dataset)}") from None
    return coco


def _first_bad_gt_record(dataset: dict) -> str:
    for what, key, needed in (
        ("image", "images", ("id",)),
        ("category", "categories", ("id",)),
        ("annotation", "annotations", ("id", "image_id", "category_id")),
    ):
        for i, rec in enumerate(dataset.get(key, [])):
            if not isinstance(rec, dict):
                return f"{what} at position {i} is not an object"
            missing = [k for k in needed if k not in rec]
            if missing:
                name = f"id {rec['id']}" if "id" in rec else f"at position {i}"
                return f"{what} {name} has no '{missing[0]}'"
    return "malformed COCO data"


def _check_gt_for_eval(gt: COCO, iou_type: str, source: str) -> None:
    # COCOeval reads `area` of every ground-truth box (area ranges) and, for segm, its segmentation;
    # a missing one would surface as a bare KeyError from inside pycocotools.
    needed = ("area", "bbox") if iou_type == "bbox" else ("area", "segmentation")
    anns = gt.dataset.get("annotations", [])
    if not all(k in a for a in anns for k in needed):
        for a in anns:
            for k in needed:
                if k not in a:
                    raise DataError(f"{source}: annotation id {a.get('id')} has no '{k}', which {iou_type} evaluation needs")
    if iou_type == "segm":
        # Polygons are rasterised at the image's size.
        for im in gt.dataset["images"]:
            if "height" not in im or "width" not in im:
                raise DataError(f"{source}: image id {im.get('id')} needs 'height' and 'width' for segm evaluation")


def _as_gt(gt: COCO | dict | str | os.PathLike) -> tuple[COCO, str]:
    if isinstance(gt, COCO):
        return gt, "ground truth"
    if isinstance(gt, dict):
        return coco_from_dict(gt), "ground truth"
    if isinstance(gt, (str, os.PathLike)):
        source = os.fspath(gt)
        return coco_from_dict(_read_json(gt, "annotations"), source=source), source
    raise TypeError(f"gt must be a pycocotools COCO, a dict or a JSON path; got {type(gt).__name__}")


def detections_to_array(image_ids, boxes_xyxy_abs, scores, category_ids) -> np.ndarray:
    """Detections as pycocotools' (N, 7) float64 rows `[image_id, x, y, w, h, score, category_id]`.

    Two layouts are accepted:
      flat       image_ids (N,), boxes_xyxy_abs (N, 4), scores (N,), category_ids (N,)
      per image  image_ids (I,), and boxes_xyxy_abs / scores / category_ids each a sequence of I
                 arrays of shapes (n_i, 4) / (n_i,) / (n_i,), or arrays (I, D, 4) / (I, D) / (I, D)
    Boxes are absolute pixels in the original image, xyxy; category ids are COCO ids (map
    contiguous labels back with `LabelMap.category_ids_of` first).
    """
    boxes = boxes_xyxy_abs
    if isinstance(boxes, np.ndarray) and boxes.ndim == 2:
        image_col = np.asarray(image_ids, dtype=np.float64).reshape(-1)
        score_col = np.asarray(scores, dtype=np.float64).reshape(-1)
        cat_col = np.asarray(category_ids, dtype=np.float64).reshape(-1)
    else:
        image_ids = np.asarray(image_ids, dtype=np.float64).reshape(-1)
        if isinstance(boxes, np.ndarray):
            if boxes.ndim != 3 or boxes.shape[0] != len(image_ids):
                raise ValueError(f"boxes_xyxy_abs of shape {boxes.shape} matches neither (N, 4) nor (I={len(image_ids)}, D, 4)")
            counts = np.full(len(image_ids), boxes.shape[1], dtype=np.int64)
            boxes = boxes.reshape(-1, 4)
            score_col = np.asarray(scores, dtype=np.float64).reshape(-1)
            cat_col = np.asarray(category_ids, dtype=np.float64).reshape(-1)
        else:
            if not (len(boxes) == len(scores) == len(category_ids) == len(image_ids)):
                raise ValueError(
                    f"per-image inputs differ in length: {len(image_ids)} image ids, {len(boxes)} box arrays,"
                    f" {len(scores)} score arrays, {len(category_ids)} category arrays"
                )
            counts = np.fromiter((len(b) for b in boxes), dtype=np.int64, count=len(boxes))
            if len(boxes):
                boxes = np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes])
                score_col = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in scores])
                cat_col = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1) for c in category_ids])
            else:
                boxes, score_col, cat_col = np.zeros((0, 4)), np.zeros(0), np.zeros(0)
        image_col = np.repeat(image_ids, counts)
    boxes = np.asarray(boxes, dtype=np.float64)
    n = len(boxes)
    if boxes.shape != (n, 4) or not (len(image_col) == len(score_col) == len(cat_col) == n):
        raise ValueError(
            f"detections differ in length: {len(image_col)} image ids, boxes of shape {boxes.shape},"
            f" {len(score_col)} scores, {len(cat_col)} category ids"
        )
    out = np.empty((n, 7), dtype=np.float64)
    out[:, 0] = image_col
    out[:, 1:3] = boxes[:, 0:2]
    out[:, 3:5] = boxes[:, 2:4] - boxes[:, 0:2]
    out[:, 5] = score_col
    out[:, 6] = cat_col
    return out


def _array_to_results(arr: np.ndarray, gt: COCO, source: str) -> list[dict]:
    if arr.ndim != 2 or arr.shape[1] != 7:
        raise DataError(f"{source}: detection array must have shape (N, 7); got {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{source}: detection row {i} holds a NaN or infinite value: {arr[i].tolist()}")
    for col, what, known in ((0, "image_id", gt.imgs), (6, "category_id", gt.cats)):
        ids = np.unique(arr[:, col])
        unknown = ids[~np.isin(ids, np.fromiter(known.keys(), dtype=np.float64, count=len(known)))]
        if len(unknown):
            bad = unknown[0]
            i = int(np.flatnonzero(arr[:, col] == bad)[0])
            raise DataError(f"{source}: detection row {i} has {what} {_fmt_id(bad)}, which is not in the ground truth")
    # Column-wise tolist() gives Python ints and floats in C; building the dicts from them is the
    # cheapest route into pycocotools (its own loadNumpyAnnotations indexes numpy scalars row by row).
    image_ids = arr[:, 0].astype(np.int64).tolist()
    category_ids = arr[:, 6].astype(np.int64).tolist()
    with gc_paused():
        return [
            {"image_id": i, "bbox": b, "score": s, "category_id": c}
            for i, b, s, c in zip(image_ids, arr[:, 1:5].tolist(), arr[:, 5].tolist(), category_ids)
        ]


def _fmt_id(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _check_results(results: list, gt: COCO, iou_type: str, source: str) -> list[dict]:
    """Shallow copies of the result dicts (loadRes writes id/area/iscrowd into them), checked."""
    needed = "bbox" if iou_type == "bbox" else "segmentation"
    try:
        with gc_paused():
            results = [dict(r) for r in results]
        image_ids = {r["image_id"] for r in results}
        cat_ids = {r["category_id"] for r in results}
        complete = all("score" in r and needed in r for r in results)
    except (KeyError, TypeError, ValueError):
        complete = False
    if not complete:
        for i, r in enumerate(results):
            if not isinstance(r, dict):
                raise DataError(f"{source}: result {i} is not an object")
            for k in ("image_id", "category_id", "score", needed):
                if k not in r:
                    raise DataError(f"{source}: result {i} has no '{k}' ({iou_type} results need image_id, category_id, {needed}, score)")
        raise DataError(f"{source}: results are malformed")
    for ids, what, known in ((image_ids, "image_id", gt.imgs), (cat_ids, "category_id", gt.cats)):
        unknown = ids - known.keys()
        if unknown:
            i, bad = next((i, r[what]) for i, r in enumerate(results) if r[what] in unknown)
            raise DataError(f"{source}: result {i} has {what} {bad!r}, which is not in the ground truth")
    return results


def _empty_results(gt: COCO) -> COCO:
    # loadRes cannot take an empty list (it inspects results[0]); this is the COCO it would build.
    res = COCO()
    res.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset["categories"]),
        "annotations": [],
    }
    res.createIndex()
    return res


def coco_evaluator(
    gt: COCO | dict | str | os.PathLike,
    results: Sequence[dict] | np.ndarray | str | os.PathLike,
    iou_type: str = "bbox",
) -> COCOeval:
    """pycocotools' COCOeval of `results` against `gt`, evaluated, accumulated and summarised (its
    `stats`, `eval['precision']` …). Arguments as `evaluate_coco`."""
    if iou_type not in IOU_TYPES:
        raise DataError(f"iou_type must be one of {', '.join(IOU_TYPES)}; got {iou_type!r}")
    gt, gt_source = _as_gt(gt)
    _check_gt_for_eval(gt, iou_type, gt_source)

    if isinstance(results, (str, os.PathLike)):
        source = os.fspath(results)
        results = _read_json(results, "predictions")
        if not isinstance(results, list):
            raise DataError(f"{source}: predictions must be a JSON list of result objects; got {type(results).__name__}")
        anns = _check_results(results, gt, iou_type, source)
    elif isinstance(results, np.ndarray):
        if iou_type != "bbox":
            raise DataError("a detection array holds boxes only; segm results must be dicts with an RLE 'segmentation'")
        source = "detections"
        anns = _array_to_results(results, gt, source)
    else:
        source = "results"
        anns = _check_results(list(results), gt, iou_type, source)
    if iou_type == "segm":
        # A result's `bbox` would make pycocotools take the box area instead of the mask area for the
        # small/medium/large buckets; mask AP buckets by mask area (as detectron2 scores segm results).
        for a in anns:
            a.pop("bbox", None)

    with _quiet(), gc_paused():
        try:
            dt = gt.loadRes(anns) if anns else _empty_results(gt)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            # e.g. an RLE whose counts or size do not decode.
            raise DataError(f"{source}: pycocotools could not read the results ({type(err).__name__}: {err})") from None
        evaluator = COCOeval(gt, dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def evaluate_coco(
    gt: COCO | dict | str | os.PathLike,
    results: Sequence[dict] | np.ndarray | str | os.PathLike,
    iou_type: str = "bbox",
) -> dict[str, float]:
    """COCO AP/AR of `results` against `gt`, as pycocotools' `COCOeval(...).stats`, keyed by
    COCO_METRIC_KEYS.

    gt       a pycocotools COCO (re-use one across evaluations: building it is not free), a COCO
             instances dict, or a JSON path
    results  a list of COCO result dicts (`image_id`, `category_id`, `score`, and `bbox` [x, y, w, h]
             or an RLE `segmentation`), a JSON path to such a list, or for bbox an (N, 7) float array
             from `detections_to_array`. segm results are scored on their masks alone (a `bbox` they
             carry is left out, so that the size buckets use the mask area).
    No results gives what COCOeval gives: 0 where ground truth exists, -1 where none does.
    """
    evaluator = coco_evaluator(gt, results, iou_type)
    return {key: float(v) for key, v in zip(COCO_METRIC_KEYS, evaluator.stats)}


def per_class_ap(evaluator: COCOeval) -> dict[int, dict]:
    """{category id: {"name", "ap", "ap_50"}} from an accumulated COCOeval, for categories with ground
    truth (area "all", 100 detections, as `map` and `map_50`).

    `evaluator.eval["precision"]` is (T IoU thresholds, R recall points, K categories, A areas, M maxDets),
    -1 where a category has no ground truth; AP of category k is the mean over T and R of
    precision[:, :, k, 0, -1] (AP50: over R at T = 0), as pycocotools' summarize computes `map`."""
    precision = evaluator.eval["precision"]
    params = evaluator.params
    area = params.areaRngLbl.index("all")
    out = {}
    for k, category_id in enumerate(params.catIds):
        values = precision[:, :, k, area, -1]
        if not (values > -1).any():
            continue
        at_50 = values[int(np.argmin(np.abs(params.iouThrs - 0.5)))]
        out[int(category_id)] = {
            "name": evaluator.cocoGt.cats[category_id].get("name", str(category_id)),
            "ap": float(values[values > -1].mean()),
            "ap_50": float(at_50[at_50 > -1].mean()) if (at_50 > -1).any() else float("nan"),
        }
    return out


def metric_name(text: str) -> str:
    """A class name as part of an MLflow metric key (letters, digits, _ - . space / only)."""
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in str(text))
