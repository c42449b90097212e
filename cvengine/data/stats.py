"""What is in a COCO instances file: class balance, box sizes, image sizes, empty images, crowd regions.

Parsed through CocoIndex, so the numbers describe what training will see: boxes clipped to their image,
degenerate boxes dropped (and counted), crowd regions counted apart from the instances.
"""
from __future__ import annotations

import os
from collections import Counter

import numpy as np

from cvengine.data.coco import CocoIndex, read_json

# COCO's size buckets by object area in pixels: small < 32^2 <= medium < 96^2 <= large.
SMALL_AREA, LARGE_AREA = 32**2, 96**2
QUANTILES = (("min", 0), ("p5", 5), ("median", 50), ("p95", 95), ("max", 100))


def _distribution(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    q = np.percentile(np.asarray(values, dtype=np.float64), [p for _, p in QUANTILES])
    return {name: round(float(v), 2) for (name, _), v in zip(QUANTILES, q)}


def dataset_stats(annotations_path: str | os.PathLike) -> dict:
    """Counts and distributions of one COCO instances file, as plain JSON-ready values.

    "instances" are the non-crowd annotations whose box survives clipping (what a detector trains on);
    box and size-bucket statistics are over those. Raises DataError when the file cannot be parsed.
    """
    annotations_path = os.fspath(annotations_path)
    data = read_json(annotations_path)
    index = CocoIndex(data, annotations_path, images_dir="")
    annotations = data.get("annotations", [])
    num_images, num_classes = len(index), index.num_classes

    # Per kept annotation row: its image position; instances exclude crowd regions.
    row_image = np.repeat(np.arange(num_images), np.diff(index.offsets))
    instance = ~index.iscrowd
    labels = index.labels[instance]
    boxes = index.boxes_xyxy_abs[instance].astype(np.float64)  # (A, 4) xyxy absolute, clipped
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    box_area = box_w * box_h

    # COCO evaluation buckets by the annotation's `area` (the mask area); fall back to the box area
    # when a file has no usable `area` fields.
    raw_area = [annotations[r].get("area") for r in index.ann_rows[instance]]
    if all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in raw_area):
        bucket_area, bucket_source = np.asarray(raw_area, dtype=np.float64), "annotation area"
    else:
        bucket_area, bucket_source = box_area, "box area"

    count = np.bincount(labels, minlength=num_classes)
    pairs = np.unique(np.stack([labels, row_image[instance]], axis=1), axis=0) if len(labels) else np.zeros((0, 2), int)
    images_with = np.bincount(pairs[:, 0], minlength=num_classes)
    classes = [
        {
            "name": index.class_names[k],
            "id": index.label_map.category_id(k),
            "count": int(count[k]),
            "images": int(images_with[k]),
        }
        for k in range(num_classes)
    ]

    annotated = {a.get("image_id") for a in annotations}
    sizes = Counter(zip(index.widths.tolist(), index.heights.tolist()))
    return {
        "annotations_path": annotations_path,
        "num_images": num_images,
        "num_annotations": len(annotations),
        "num_categories": num_classes,
        "num_instances": int(instance.sum()),
        "num_crowd": int(sum(1 for a in annotations if a.get("iscrowd", 0))),
        "num_degenerate": int(index.num_degenerate),
        "num_images_without_annotations": int(sum(1 for i in index.image_ids.tolist() if i not in annotated)),
        "classes": classes,
        "box_width": _distribution(box_w),
        "box_height": _distribution(box_h),
        "box_area": _distribution(box_area),
        "size_buckets": {
            "by": bucket_source,
            "small": int((bucket_area < SMALL_AREA).sum()),
            "medium": int(((bucket_area >= SMALL_AREA) & (bucket_area < LARGE_AREA)).sum()),
            "large": int((bucket_area >= LARGE_AREA).sum()),
        },
        "instances_per_image": _distribution(np.bincount(row_image[instance], minlength=num_images)),
        "image_width": _distribution(index.widths),
        "image_height": _distribution(index.heights),
        "image_sizes": [{"width": w, "height": h, "count": n} for (w, h), n in sizes.most_common(10)],
    }


def _format_distribution(dist: dict | None) -> str:
    if dist is None:
        return "-"
    return "  ".join(f"{k} {v:g}" for k, v in dist.items())


def render_stats(stats: dict) -> str:
    """The dict from `dataset_stats` as an aligned, human-readable text block."""
    lines = [
        f"{stats['annotations_path']}",
        f"  images       {stats['num_images']}  ({stats['num_images_without_annotations']} without annotations)",
        f"  annotations  {stats['num_annotations']}  ({stats['num_instances']} instances, {stats['num_crowd']} crowd,"
        f" {stats['num_degenerate']} degenerate boxes dropped)",
        f"  categories   {stats['num_categories']}",
        "",
        f"  {'class':<20} {'id':>6} {'count':>8} {'images':>8}",
    ]
    for c in stats["classes"]:
        lines.append(f"  {c['name'][:20]:<20} {c['id']:>6} {c['count']:>8} {c['images']:>8}")
    b = stats["size_buckets"]
    lines += [
        "",
        f"  box width    {_format_distribution(stats['box_width'])}",
        f"  box height   {_format_distribution(stats['box_height'])}",
        f"  box area     {_format_distribution(stats['box_area'])}",
        f"  COCO sizes   small {b['small']}  medium {b['medium']}  large {b['large']}  (by {b['by']})",
        f"  per image    {_format_distribution(stats['instances_per_image'])}",
        f"  image width  {_format_distribution(stats['image_width'])}",
        f"  image height {_format_distribution(stats['image_height'])}",
        "  image sizes  " + ", ".join(f"{s['width']}x{s['height']} ({s['count']})" for s in stats["image_sizes"]),
    ]
    return "\n".join(lines)
