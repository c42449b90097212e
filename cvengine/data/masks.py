"""COCO segmentations (polygons, uncompressed or compressed RLE) -> binary masks, with pycocotools.

The one place where COCO `segmentation` fields are decoded; every task that needs a mask calls
`decode_segmentation`.
"""
from __future__ import annotations

import json
import os

import numpy as np

from cvengine.errors import DataError, RecipeError


def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError:  # pragma: no cover - pycocotools is a core dependency
        raise DataError("decoding COCO masks needs pycocotools: pip install pycocotools") from None
    return mask_utils


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """One compressed RLE (pycocotools dict, `counts` bytes) of a COCO segmentation of an image of
    `height` x `width`: polygons are rasterised and merged, uncompressed RLE is compressed."""
    mask_utils = _mask_utils()
    if isinstance(segmentation, list):
        if not segmentation:
            return mask_utils.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        # frPyObjects wants every polygon as a flat list of at least 6 numbers.
        polygons = [[float(v) for v in poly] for poly in segmentation]
        if any(len(p) < 6 or len(p) % 2 for p in polygons):
            raise ValueError("a polygon needs an even number of coordinates, at least 6")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise ValueError(f"RLE size {size!r} is not [height, width]")
        if [int(size[0]), int(size[1])] != [height, width]:
            raise ValueError(f"RLE size {list(size)} differs from the image's [height, width] [{height}, {width}]")
        if isinstance(counts, list):
            return mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(counts, str):
            return {"size": [height, width], "counts": counts.encode("ascii")}
        if isinstance(counts, bytes):
            return {"size": [height, width], "counts": counts}
        raise ValueError("RLE counts must be a string or a list of integers")
    raise ValueError(f"segmentation must be a list of polygons or an RLE object, got {type(segmentation).__name__}")


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation` (polygons or RLE) -> (height, width) uint8 mask of 0 and 1.

    Raises ValueError (with the reason) for a segmentation pycocotools cannot decode; callers that
    know the file and record turn it into a DataError naming them.
    """
    mask_utils = _mask_utils()
    rle = segmentation_to_rle(segmentation, int(height), int(width))
    mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"decoded mask is {mask.shape[0]}x{mask.shape[1]}, image is {height}x{width}")
    return mask


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) 0/1 mask -> COCO compressed RLE with `counts` as text (JSON-ready)."""
    rle = _mask_utils().encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# ----------------------------------------------------------------------------------------------------
# Semantic label maps: (H, W) uint8 of contiguous labels, IGNORE where neither the loss nor the metrics
# look (crowd regions, the data set's ignore value).

IGNORE = 255
# The class of every pixel no instance covers, when label maps are painted from COCO instances.
BACKGROUND = "background"


def paint_semantic_map(segmentations: list, labels, iscrowd, height: int, width: int, background: int = 0, where: str = "") -> np.ndarray:
    """Instances of one image -> (H, W) uint8 label map.

    Deterministic whatever the file's annotation order: pixels start as `background`; crowd regions
    become IGNORE; then instances are painted from the largest mask area to the smallest, so that
    where instances overlap the smaller one wins (a cup on a table stays a cup). Equal areas keep
    the file's order. `where` names the image in errors.
    """
    # Painted in column-major order, the order pycocotools decodes masks in: every pass is contiguous.
    semantic = np.full((height, width), background, dtype=np.uint8, order="F")
    masks = []
    for k, segmentation in enumerate(segmentations):
        try:
            masks.append(decode_segmentation(segmentation, height, width).view(bool))  # 0/1 uint8 read as bool, no copy
        except ValueError as err:
            raise DataError(f"{where}: instance {k} ({'crowd' if iscrowd[k] else 'label ' + str(int(labels[k]))}): {err}") from None
    for k, mask in enumerate(masks):
        if iscrowd[k]:
            np.copyto(semantic, IGNORE, where=mask)
    areas = np.array([np.count_nonzero(m) for m in masks], dtype=np.int64)
    for k in np.argsort(-areas, kind="stable"):
        if not iscrowd[k]:
            np.copyto(semantic, int(labels[k]), where=masks[k])
    return np.ascontiguousarray(semantic)


def read_label_png(path: str) -> np.ndarray:
    """A single-channel label PNG (mode L, P or 16-bit) -> (H, W) integers of the stored values
    (uint8 for 8-bit PNGs, wider for 16-bit ones).

    Palette PNGs (ADE20K, Pascal VOC) store label ids as palette indices: the indices are read, not
    the colours. Colour masks are refused with an error naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("RGB", "RGBA", "LA", "CMYK"):
                raise DataError(f"mask {path} is a {image.mode} colour image; masks must hold one label id per pixel (PNG mode L, P or I;16)")
            return np.asarray(image)
    except FileNotFoundError:
        raise DataError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read mask {path}: {err}") from None


def remap_png_labels(values: np.ndarray, num_classes: int, ignore_index: int, reduce_labels: bool, path: str) -> np.ndarray:
    """Stored PNG values (H, W) of any integer dtype -> contiguous labels (H, W) uint8 with IGNORE.

    ignore_index: the stored value meaning "not labelled" (255 in most data sets).
    reduce_labels (ADE20K): stored 0 is "other" -> IGNORE, and every other value v -> v - 1.
    A value outside the label map is an error naming the file.
    """
    if values.dtype == np.uint8:
        import cv2

        # 8-bit masks: the rule applied once to the 256 possible values, then OpenCV's table look-up
        # per pixel (a tenth of a millisecond at 640x480, against several passes in int64).
        table, bad_values = _remap_values(np.arange(256, dtype=np.int64), num_classes, ignore_index, reduce_labels)
        out = cv2.LUT(values, table)
        bad = cv2.LUT(values, bad_values.astype(np.uint8)).view(bool)
        stored_bad = np.unique(values[bad]) if bad.any() else []
    else:
        out, bad = _remap_values(values.astype(np.int64), num_classes, ignore_index, reduce_labels)
        stored_bad = np.unique(values[bad]) if bad.any() else []
    if len(stored_bad):
        shift = 1 if reduce_labels else 0
        found = [int(v) for v in stored_bad[:5]]
        raise DataError(
            f"mask {path}: values {found} are outside 0..{num_classes - 1 + shift} ({num_classes} classes in data.labels"
            f"{', reduce_labels' if reduce_labels else ''}) and are not data.ignore_index = {ignore_index}"
        )
    return out


def _remap_values(values: np.ndarray, num_classes: int, ignore_index: int, reduce_labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Stored values (any shape, int64) -> (labels uint8 with IGNORE, bool: outside the label map)."""
    ignore = values == ignore_index
    if reduce_labels:
        ignore |= values == 0
        values = values - 1
    bad = ~ignore & ((values < 0) | (values >= num_classes))
    out = values.astype(np.uint8)
    out[ignore | bad] = IGNORE
    return out, bad


def read_class_names(labels, where: str = "data.labels") -> list[str]:
    """data.labels: a list of names, or a file holding a JSON list, a JSON object {"0": name, …}
    (ids 0..K-1, each once) or one name per line."""
    if isinstance(labels, list):
        names = labels
    elif isinstance(labels, str):
        try:
            with open(labels, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as err:
            raise RecipeError(f"{where} = '{labels}': cannot read the label file ({err.strerror or err})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [line.strip() for line in text.splitlines() if line.strip()]
        if isinstance(data, dict):
            try:
                by_id = {int(k): v for k, v in data.items()}
            except ValueError:
                raise RecipeError(f"{where} = '{labels}': keys must be label ids (\"0\", \"1\", …)") from None
            if sorted(by_id) != list(range(len(by_id))):
                raise RecipeError(f"{where} = '{labels}': label ids must be 0..{len(by_id) - 1} with none missing; got {sorted(by_id)[:10]}")
            names = [by_id[k] for k in range(len(by_id))]
        else:
            names = data
    else:
        raise RecipeError(f"{where} must be a list of class names or a label file; got {labels!r}")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise RecipeError(f"{where}: needs a non-empty list of class names (strings)")
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}: class names must be unique")
    return names


def instances_to_panoptic(
    instances_json: str | os.PathLike,
    out_json: str | os.PathLike,
    out_png_dir: str | os.PathLike,
    stuff: list[str] | None = None,
) -> dict:
    """A COCO instances file -> COCO panoptic json + PNGs.

    Every instance becomes a thing segment (crowd instances become crowd segments); where instances
    overlap the smaller one wins. `stuff` names stuff classes: the first one ("background") fills
    every pixel no instance covers; with no stuff class those pixels are void. Stuff categories get
    ids after the largest thing id. Returns {"annotations": out_json, "masks": out_png_dir, "num_images"}.
    """
    from PIL import Image

    from cvengine.data.coco import read_json
    from cvengine.metrics.panoptic import id_to_rgb

    data = read_json(instances_json)
    stuff = list(stuff or [])
    things = [{**c, "isthing": 1} for c in data["categories"]]
    next_id = max((int(c["id"]) for c in things), default=0) + 1
    stuff_categories = [{"id": next_id + k, "name": name, "supercategory": "stuff", "isthing": 0} for k, name in enumerate(stuff)]
    os.makedirs(out_png_dir, exist_ok=True)
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    annotations = []
    for im in data["images"]:
        h, w = int(im["height"]), int(im["width"])
        ids = np.zeros((h, w), dtype=np.int64)
        segments = []
        anns = by_image.get(int(im["id"]), [])
        masks = []
        for ann in anns:
            try:
                masks.append(decode_segmentation(ann["segmentation"], h, w).astype(bool))
            except (KeyError, ValueError) as err:
                raise DataError(f"{instances_json}: annotation id {ann.get('id')}: cannot decode its segmentation ({err})") from None
        order = np.argsort([-int(m.sum()) for m in masks], kind="stable")
        for k in order:
            ann, mask = anns[k], masks[k]
            segment_id = len(segments) + 1
            ids[mask] = segment_id
            segments.append({"id": segment_id, "category_id": int(ann["category_id"]), "iscrowd": int(ann.get("iscrowd", 0))})
        if stuff_categories:
            segment_id = len(segments) + 1
            ids[ids == 0] = segment_id
            segments.append({"id": segment_id, "category_id": stuff_categories[0]["id"], "iscrowd": 0})
        # Areas and boxes from the final map (smaller instances may cover parts of larger ones).
        present = []
        for s in segments:
            mask = ids == s["id"]
            area = int(mask.sum())
            if area == 0:
                continue
            ys, xs = np.nonzero(mask)
            s["area"] = area
            s["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            present.append(s)
        png_name = os.path.splitext(str(im["file_name"]))[0] + ".png"
        os.makedirs(os.path.dirname(os.path.join(out_png_dir, png_name)) or ".", exist_ok=True)
        Image.fromarray(id_to_rgb(ids)).save(os.path.join(out_png_dir, png_name))
        annotations.append({"image_id": int(im["id"]), "file_name": png_name, "segments_info": present})
    out = {
        "info": data.get("info", {}),
        "images": data["images"],
        "annotations": annotations,
        "categories": things + stuff_categories,
    }
    tmp = f"{out_json}.tmp"
    import json

    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(out, fh, separators=(",", ":"))
    os.replace(tmp, out_json)
    return {"annotations": str(out_json), "masks": str(out_png_dir), "num_images": len(annotations)}
