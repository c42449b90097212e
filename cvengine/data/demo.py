"""A small, real COCO data set to try cvengine on: scikit-learn's handwritten digits on textured canvases.

Each canvas gets a few of the 1797 8x8 digit scans, upscaled, recoloured and placed without ink overlap
on a noisy, smoothly shaded background. Every digit is one COCO annotation with its tight ink box, its
ink mask (RLE) and the mask's area, so detection, instance, semantic and panoptic data sets can all be
derived from the same canvases.

    out_dir/train/images/000001.jpg ...    out_dir/train/annotations.json
    out_dir/val/images/000001.jpg ...      out_dir/val/annotations.json

Category ids are 1..10 for the digits "0".."9": on purpose not 0-based, so that code which confuses COCO
category ids with contiguous labels fails on the demo too.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from typing import Callable

import numpy as np
from PIL import Image

from cvengine.errors import DataError

NUM_CLASSES = 10
CATEGORIES = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(NUM_CLASSES)]

# Side of the upscaled 8x8 digit cell, in pixels (the ink box inside it is a little smaller).
DIGIT_SIZE_RANGE = (24, 64)
# A digit scan's ink (0..1) at or above this is part of the mask; the rest is background.
INK_THRESHOLD = 0.5
# Fraction of the digit scans kept for the validation split; train and val never share a scan.
VAL_POOL_FRACTION = 0.2
# Two digits' boxes may share at most this fraction of the smaller box (their ink never overlaps).
MAX_BOX_OVERLAP = 0.2
PLACEMENT_TRIES = 30
JPEG_QUALITY = 92


@functools.lru_cache(maxsize=1)
def load_digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ink (N, 8, 8) float32 in 0..1 and digit classes (N,) int64, N = 1797."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the demo data set is built from scikit-learn's digits: pip install scikit-learn")
    # Reading the file scikit-learn ships skips importing scikit-learn itself (~0.8 s); load_digits is
    # the fallback should that file move.
    csv_path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    if os.path.isfile(csv_path):
        table = np.loadtxt(csv_path, delimiter=",")  # (N, 65): 64 pixels 0..16, then the class
        pixels, classes = table[:, :64], table[:, 64]
    else:
        from sklearn.datasets import load_digits

        pixels, classes = load_digits(return_X_y=True)
    ink = (pixels / 16.0).astype(np.float32).reshape(-1, 8, 8)
    return ink, classes.astype(np.int64)


def scan_pools(seed: int, num_scans: int) -> dict[str, np.ndarray]:
    """Disjoint scan indices per split; depends on the seed only (not on the number of images)."""
    rng = np.random.default_rng([seed, 0])
    order = rng.permutation(num_scans)
    num_val = int(num_scans * VAL_POOL_FRACTION)
    return {"val": np.sort(order[:num_val]), "train": np.sort(order[num_val:])}


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32: a random base colour with smooth colour blobs; noise is added later."""
    base = rng.uniform(40, 215, size=3)
    blobs = rng.normal(0.0, 22.0, size=(5, 5, 3)).astype(np.float32)
    channels = [
        np.asarray(Image.fromarray(blobs[:, :, c], mode="F").resize((width, height), Image.BICUBIC))
        for c in range(3)
    ]
    return np.stack(channels, axis=2) + base.astype(np.float32)


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _ink_colour(rng: np.random.Generator, background_rgb: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the background by at least 70 grey levels of luminance."""
    target = _luminance(background_rgb)
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if abs(_luminance(colour) - target) >= 70:
            return colour
    return np.zeros(3) if target > 127 else np.full(3, 255.0)


def _digit_mask(rng: np.random.Generator, ink: np.ndarray, max_side: int) -> np.ndarray:
    """An 8x8 scan (0..1) upscaled bilinearly to a random cell size, thresholded and cropped to its
    ink: (h, w) bool whose first/last rows and columns all contain ink."""
    low, high = min(DIGIT_SIZE_RANGE[0], max_side), min(DIGIT_SIZE_RANGE[1], max_side)
    cell_h = int(rng.integers(low, high + 1))
    cell_w = max(8, int(round(cell_h * rng.uniform(0.7, 1.0))))
    big = np.asarray(Image.fromarray(ink, mode="F").resize((cell_w, cell_h), Image.BILINEAR))
    mask = big >= INK_THRESHOLD
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return mask[:0, :0]
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _overlap_too_large(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x, y, w, h = box
    for px, py, pw, ph in placed:
        iw = min(x + w, px + pw) - max(x, px)
        ih = min(y + h, py + ph) - max(y, py)
        if iw > 0 and ih > 0 and iw * ih > MAX_BOX_OVERLAP * min(w * h, pw * ph):
            return True
    return False


def compose_canvas(
    rng: np.random.Generator,
    scan_indices: np.ndarray,
    canvas: tuple[int, int],
    num_digits: int,
) -> tuple[np.ndarray, list[dict]]:
    """One canvas with up to `num_digits` digits drawn from `scan_indices` (fewer when they do not fit).

    Returns the image (H, W, 3) uint8 and per digit a dict: `digit` (0..9), `scan` (index into the
    scikit-learn digits), `bbox_xywh` (tight ink box, int pixels) and `mask` (H, W) bool on the canvas.
    """
    ink_all, classes = load_digit_scans()
    height, width = canvas
    image = _background(rng, height, width)
    background_rgb = image.mean(axis=(0, 1))
    occupied = np.zeros((height, width), dtype=bool)
    placed_boxes: list[tuple[int, int, int, int]] = []
    instances: list[dict] = []
    for _ in range(num_digits):
        scan = int(scan_indices[rng.integers(len(scan_indices))])
        crop = _digit_mask(rng, ink_all[scan], max_side=min(height, width))
        ch, cw = crop.shape
        if ch == 0:
            continue
        colour = _ink_colour(rng, background_rgb)
        for _ in range(PLACEMENT_TRIES):
            x, y = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
            box = (x, y, cw, ch)
            if _overlap_too_large(box, placed_boxes) or (occupied[y : y + ch, x : x + cw] & crop).any():
                continue
            occupied[y : y + ch, x : x + cw] |= crop
            image[y : y + ch, x : x + cw][crop] = colour
            mask = np.zeros((height, width), dtype=bool)
            mask[y : y + ch, x : x + cw] = crop
            placed_boxes.append(box)
            instances.append({"digit": int(classes[scan]), "scan": scan, "bbox_xywh": box, "mask": mask})
            break
    # Sensor-like grain over background and ink alike, so that no pixel value identifies the ink.
    image += rng.normal(0.0, 7.0, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances


def _mask_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of an (H, W) bool mask, `counts` as text so that it fits in JSON."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def _write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.write("\n")
    os.replace(tmp, path)


def _write_detection_split(
    split_dir: str, rng: np.random.Generator, scan_indices: np.ndarray, num_images: int, canvas: tuple[int, int]
) -> dict:
    """COCO instances (boxes + ink masks as RLE) with 1-4 digits per canvas."""
    images_dir = os.path.join(split_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    height, width = canvas
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels, instances = compose_canvas(rng, scan_indices, canvas, num_digits=int(rng.integers(1, 5)))
        file_name = f"{image_id:06d}.jpg"
        Image.fromarray(pixels).save(os.path.join(images_dir, file_name), quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for inst in instances:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": inst["digit"] + 1,
                    "bbox": list(inst["bbox_xywh"]),
                    "area": int(inst["mask"].sum()),
                    "segmentation": _mask_rle(inst["mask"]),
                    "iscrowd": 0,
                }
            )
    annotations_path = os.path.join(split_dir, "annotations.json")
    data = {
        "info": {"description": "cvengine demo: scikit-learn handwritten digits on textured canvases"},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    _write_json_atomic(annotations_path, data)
    return {
        "annotations": annotations_path,
        "images": images_dir,
        "num_images": len(images),
        "num_annotations": len(annotations),
    }


# USER: a new demo task is one function writing one split, registered here.
def _write_panoptic_split(
    split_dir: str, rng: np.random.Generator, scan_indices: np.ndarray, num_images: int, canvas: tuple[int, int]
) -> dict:
    """The detection split (kept as annotations.json), converted to COCO panoptic: digits are things,
    every other pixel is the stuff class "background"; panoptic.json + panoptic/*.png."""
    from cvengine.data.masks import instances_to_panoptic

    instances = _write_detection_split(split_dir, rng, scan_indices, num_images, canvas)
    out_json = os.path.join(split_dir, "panoptic.json")
    result = instances_to_panoptic(instances["annotations"], out_json, os.path.join(split_dir, "panoptic"), stuff=["background"])
    return {
        "annotations": out_json,
        "images": instances["images"],
        "masks": result["masks"],
        "num_images": instances["num_images"],
        "num_annotations": instances["num_annotations"] + instances["num_images"],
    }


SPLIT_WRITERS: dict[str, Callable[..., dict]] = {
    "detection": _write_detection_split,
    # The detection writer already stores each digit's ink mask (RLE).
    "instance_segmentation": _write_detection_split,
    "panoptic_segmentation": _write_panoptic_split,
    "classification": lambda *args, **kwargs: _demo_tasks().write_classification_split(*args, **kwargs),
    "semantic_segmentation": lambda *args, **kwargs: _demo_tasks().write_semantic_split(*args, **kwargs),
}
# Data layouts other than COCO json that a task's writer can produce (`layout=`).
EXTRA_LAYOUTS: dict[str, tuple[str, ...]] = {"classification": ("imagefolder",)}
# Class sets other than the ten digits that a task's writer can produce (`classes=`). Semantic "ink":
# one class "digit" for every digit's ink. A small model trained from scratch learns where the ink is
# within minutes on a CPU, and which of ten digits each ink pixel belongs to far more slowly.
EXTRA_CLASSES: dict[str, tuple[str, ...]] = {"semantic_segmentation": ("ink",)}
INK_CATEGORIES = [{"id": 1, "name": "digit", "supercategory": "digit"}]


def _demo_tasks():
    from cvengine.data import demo_tasks  # imports this module: loaded on first use

    return demo_tasks


def make_demo(
    out_dir: str | os.PathLike,
    task: str = "detection",
    seed: int = 0,
    num_train: int = 64,
    num_val: int = 16,
    canvas: tuple[int, int] = (160, 160),
    layout: str = "coco",
    classes: str = "digits",
) -> dict:
    """Write a demo COCO data set under `out_dir` (train/ and val/) and return its paths and counts.

    `canvas` is (height, width) in pixels. The same seed gives byte-identical annotation files and
    identical pixels; train and val use disjoint digit scans. `layout`: "coco", or one of the task's
    EXTRA_LAYOUTS (classification: "imagefolder"). `classes`: "digits" (category ids 1..10 for "0".."9"),
    or one of the task's EXTRA_CLASSES (semantic_segmentation: "ink", one category "digit").
    """
    if task not in SPLIT_WRITERS:
        raise DataError(f"demo task '{task}' is not supported; supported: {', '.join(sorted(SPLIT_WRITERS))}")
    if layout != "coco" and layout not in EXTRA_LAYOUTS.get(task, ()):
        raise DataError(f"demo layout '{layout}' is not available for {task}; available: {', '.join(('coco',) + EXTRA_LAYOUTS.get(task, ()))}")
    if classes != "digits" and classes not in EXTRA_CLASSES.get(task, ()):
        raise DataError(f"demo classes '{classes}' are not available for {task}; available: {', '.join(('digits',) + EXTRA_CLASSES.get(task, ()))}")
    layout_kwargs = {"layout": layout} if layout != "coco" else {}
    if classes != "digits":
        layout_kwargs["classes"] = classes
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"demo seed must be a non-negative integer (got {seed!r})")
    if num_train < 1 or num_val < 1:
        raise DataError(f"demo needs at least one train and one val image (got num_train={num_train}, num_val={num_val})")
    height, width = (int(v) for v in canvas)
    if min(height, width) < 16:
        raise DataError(f"demo canvas {height}x{width} is too small for a digit; use at least 16x16")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"demo output {out_dir} exists and is not a folder")

    ink, _ = load_digit_scans()
    pools = scan_pools(seed, len(ink))
    splits = {}
    for split_number, (split, num_images) in enumerate((("train", num_train), ("val", num_val)), start=1):
        # One generator per split: the val images do not change when num_train does.
        rng = np.random.default_rng([seed, split_number])
        splits[split] = SPLIT_WRITERS[task](os.path.join(out_dir, split), rng, pools[split], num_images, (height, width), **layout_kwargs)
    return {
        "out_dir": out_dir,
        "task": task,
        "seed": seed,
        "canvas": [height, width],
        "categories": len(INK_CATEGORIES if classes == "ink" else CATEGORIES),
        "splits": splits,
    }
