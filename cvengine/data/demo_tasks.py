"""Demo splits for classification and semantic segmentation, built from the same digit canvases as
the detection demo (`cvengine.data.demo`).

classification: one digit per image, roughly centred (a crop of 1.2-1.8x the digit around it, so
    scale, position, colour and background vary); COCO json with one annotation per image (bbox = the
    digit), or with layout "imagefolder" the files under images/<digit>/ and no json.
semantic_segmentation: the detection split (COCO instances with RLE masks, category ids 1..10) plus
    the same labels as PNG label maps in masks/ (0 = background, digit d = d + 1) and labels.json,
    so that both data layouts train from one demo folder. With classes "ink" every digit is category
    id 1 "digit" (label 1): where the ink is, not which digit it is.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from cvengine.data import demo
from cvengine.errors import DataError

# The crop around a classification digit, as a multiple of the digit's longer side.
CROP_RANGE = (1.2, 1.8)
SEMANTIC_CLASS_NAMES = {
    "digits": ["background"] + [c["name"] for c in demo.CATEGORIES],
    "ink": ["background"] + [c["name"] for c in demo.INK_CATEGORIES],
}


def write_classification_split(split_dir: str, rng: np.random.Generator, scan_indices: np.ndarray, num_images: int, canvas: tuple[int, int], layout: str = "coco") -> dict:
    if layout not in ("coco", "imagefolder"):
        raise DataError(f"demo layout '{layout}' is not one of coco, imagefolder")
    images_dir = os.path.join(split_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    if layout == "imagefolder":
        # Every class has its folder, even when a small split draws no image of it: the class list
        # of an ImageFolder data set is its folder list.
        for category in demo.CATEGORIES:
            os.makedirs(os.path.join(images_dir, category["name"]), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        pixels, instances = demo.compose_canvas(rng, scan_indices, canvas, num_digits=1)
        x, y, w, h = instances[0]["bbox_xywh"]
        side = int(round(max(w, h) * rng.uniform(*CROP_RANGE)))
        side = max(16, min(side, canvas[0], canvas[1]))
        # Centre with a little jitter, kept inside the canvas and around the whole digit.
        cx = x + w / 2 + rng.uniform(-0.1, 0.1) * side
        cy = y + h / 2 + rng.uniform(-0.1, 0.1) * side
        x0 = int(np.clip(round(cx - side / 2), max(0, x + w - side), min(canvas[1] - side, x)))
        y0 = int(np.clip(round(cy - side / 2), max(0, y + h - side), min(canvas[0] - side, y)))
        crop = pixels[y0 : y0 + side, x0 : x0 + side]
        digit = instances[0]["digit"]
        file_name = f"{image_id:06d}.jpg" if layout == "coco" else os.path.join(str(digit), f"{image_id:06d}.jpg")
        os.makedirs(os.path.dirname(os.path.join(images_dir, file_name)), exist_ok=True)
        Image.fromarray(crop).save(os.path.join(images_dir, file_name), quality=demo.JPEG_QUALITY)
        ch, cw = crop.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": cw, "height": ch})
        bbox = [x - x0, y - y0, w, h]
        annotations.append({"id": image_id, "image_id": image_id, "category_id": digit + 1, "bbox": bbox, "area": int(instances[0]["mask"].sum()), "iscrowd": 0})
    annotations_path = None
    if layout == "coco":
        annotations_path = os.path.join(split_dir, "annotations.json")
        data = {"info": {"description": "cvengine demo: one handwritten digit per image"}, "images": images, "annotations": annotations, "categories": demo.CATEGORIES}
        demo._write_json_atomic(annotations_path, data)
    return {"annotations": annotations_path, "images": images_dir, "num_images": len(images), "num_annotations": len(annotations)}


def write_semantic_split(split_dir: str, rng: np.random.Generator, scan_indices: np.ndarray, num_images: int, canvas: tuple[int, int], classes: str = "digits") -> dict:
    from cvengine.tasks.semantic.dataset import CocoSemanticIndex

    result = demo._write_detection_split(split_dir, rng, scan_indices, num_images, canvas)
    if classes == "ink":
        # The same canvases and masks; every digit becomes the one category.
        with open(result["annotations"], encoding="utf-8") as fh:
            data = json.load(fh)
        for annotation in data["annotations"]:
            annotation["category_id"] = demo.INK_CATEGORIES[0]["id"]
        data["categories"] = demo.INK_CATEGORIES
        demo._write_json_atomic(result["annotations"], data)
    masks_dir = os.path.join(split_dir, "masks")
    os.makedirs(masks_dir, exist_ok=True)
    # The PNG maps are painted by the same code that reads the COCO file for training.
    index = CocoSemanticIndex.load(result["annotations"], result["images"])
    if index.class_names != SEMANTIC_CLASS_NAMES[classes]:
        raise AssertionError(f"demo classes {index.class_names} != {SEMANTIC_CLASS_NAMES[classes]}")
    for i in range(len(index)):
        stem = os.path.splitext(index.file_names[i])[0]
        Image.fromarray(index.semantic_map(i), mode="L").save(os.path.join(masks_dir, stem + ".png"))
    labels_path = os.path.join(split_dir, "labels.json")
    with open(labels_path, "w", encoding="utf-8") as fh:
        json.dump({str(k): name for k, name in enumerate(SEMANTIC_CLASS_NAMES[classes])}, fh, indent=1)
    return {**result, "masks": masks_dir, "labels": labels_path}
