"""What is in a data set: class balance, box or segment sizes, image sizes, empty images, crowd regions.

The layout is detected as `python -m cvengine.data check` detects it (cvengine.data.validate):
COCO instances (through CocoIndex, so the numbers describe what training sees: boxes clipped to
their image, degenerate boxes dropped and counted, crowd regions apart from the instances), COCO
classification (no bbox), COCO panoptic (through PanopticIndex; pixel counts from the PNGs when the
PNG folder is there) and ImageFolder.
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


def dataset_stats(annotations_path: str | os.PathLike, masks_dir: str | os.PathLike | None = None) -> dict:
    """Counts and distributions of one data set, as plain JSON-ready values; `layout` says which
    kind it is. `annotations_path` is a COCO or COCO panoptic json, or an ImageFolder folder;
    masks_dir: a panoptic PNG folder (default: the json's path without .json, when it exists).
    Raises DataError when the data cannot be parsed (`python -m cvengine.data check` says why)."""
    from cvengine.data.validate import COCO_CLASSIFICATION, COCO_PANOPTIC, detect_layout

    annotations_path = os.fspath(annotations_path)
    if os.path.isdir(annotations_path):
        return image_folder_stats(annotations_path)
    data = read_json(annotations_path)
    layout = detect_layout(data)
    if layout == COCO_PANOPTIC:
        return panoptic_stats(annotations_path, masks_dir, data=data)
    if layout == COCO_CLASSIFICATION:
        return classification_stats(annotations_path, data=data)
    return instances_stats(annotations_path, data=data)


def instances_stats(annotations_path: str | os.PathLike, data: dict | None = None) -> dict:
    """Counts and distributions of one COCO instances file.

    "instances" are the non-crowd annotations whose box survives clipping (what a detector trains on);
    box and size-bucket statistics are over those.
    """
    annotations_path = os.fspath(annotations_path)
    data = read_json(annotations_path) if data is None else data
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
        "layout": "coco",
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
    layout = stats.get("layout", "coco")
    if layout == "coco-panoptic":
        return _render_panoptic(stats)
    if layout in ("coco-classification", "image-folder"):
        return _render_classification(stats)
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


def _size_stats(widths: np.ndarray, heights: np.ndarray) -> dict:
    sizes = Counter(zip(widths.tolist(), heights.tolist()))
    return {
        "image_width": _distribution(widths),
        "image_height": _distribution(heights),
        "image_sizes": [{"width": w, "height": h, "count": n} for (w, h), n in sizes.most_common(10)],
    }


def panoptic_stats(annotations_path: str | os.PathLike, masks_dir: str | os.PathLike | None = None, data: dict | None = None) -> dict:
    """Counts and distributions of one COCO panoptic json (through PanopticIndex, the parser training
    uses): segments per category, things against stuff, crowd segments, segment areas (the json's
    `area`), segments per image, image sizes. With the PNG folder (masks_dir, or the json's path
    without .json when that folder exists): pixels per category and void pixels, counted in the PNGs,
    and how many segments' json `area` differs from their pixel count."""
    from cvengine.tasks.panoptic.dataset import PanopticIndex

    annotations_path = os.fspath(annotations_path)
    data = read_json(annotations_path) if data is None else data
    if masks_dir is None:
        default = os.path.splitext(annotations_path)[0]
        masks_dir = default if os.path.isdir(default) else None
    masks_dir = None if masks_dir is None else os.fspath(masks_dir)
    index = PanopticIndex(data, annotations_path, images_dir="", masks_dir=masks_dir or "")
    num_classes = index.num_classes

    # The json's `area` per (image id, segment id); PanopticIndex keeps ids, labels and crowd flags.
    json_area = {
        (int(ann["image_id"]), s.get("id")): s.get("area")
        for ann in data["annotations"] for s in ann["segments_info"] if isinstance(s, dict)
    }
    # Per segment (S,): label, crowd flag, image position, json area (NaN when absent).
    rows = [
        (label, iscrowd, i, json_area.get((int(index.image_ids[i]), sid)))
        for i, segments in enumerate(index.segments) for sid, label, iscrowd in segments
    ]
    labels = np.array([r[0] for r in rows], dtype=np.int64)
    crowd = np.array([r[1] for r in rows], dtype=bool)
    image_of = np.array([r[2] for r in rows], dtype=np.int64)
    areas = np.array([float(r[3]) if isinstance(r[3], (int, float)) and not isinstance(r[3], bool) else np.nan for r in rows], dtype=np.float64)
    thing = index.isthing[labels] if len(labels) else np.zeros(0, bool)
    known_area = ~np.isnan(areas)

    count = np.bincount(labels, minlength=num_classes)
    crowd_count = np.bincount(labels[crowd], minlength=num_classes)
    area_sum = np.bincount(labels[known_area], weights=areas[known_area], minlength=num_classes)
    pairs = np.unique(np.stack([labels, image_of], axis=1), axis=0) if len(labels) else np.zeros((0, 2), np.int64)
    images_with = np.bincount(pairs[:, 0], minlength=num_classes)
    pixels = _panoptic_pixels(index, json_area) if masks_dir is not None else None

    classes = []
    for k in range(num_classes):
        row = {
            "name": index.class_names[k],
            "id": index.label_map.category_id(k),
            "isthing": bool(index.isthing[k]),
            "segments": int(count[k]),
            "crowd": int(crowd_count[k]),
            "images": int(images_with[k]),
            "area": int(area_sum[k]),
        }
        if pixels is not None:
            row["pixels"] = int(pixels["by_label"][k])
        classes.append(row)

    def group(segments: np.ndarray, categories: np.ndarray) -> dict:
        return {
            "categories": int(categories.sum()),
            "segments": int(segments.sum()),
            "crowd": int((segments & crowd).sum()),
            "area": int(areas[segments & known_area].sum()),
        }

    stats = {
        "layout": "coco-panoptic",
        "annotations_path": annotations_path,
        "masks_dir": masks_dir,
        "num_images": len(index),
        "num_annotations": len(data["annotations"]),
        "num_categories": num_classes,
        "num_segments": int(len(labels)),
        "num_crowd": int(crowd.sum()),
        "num_images_without_segments": int(sum(1 for s in index.segments if not s)),
        "things": group(thing, index.isthing),
        "stuff": group(~thing, ~index.isthing),
        "classes": classes,
        "segment_area": _distribution(areas[known_area & ~crowd]),
        "segments_per_image": _distribution(np.bincount(image_of, minlength=len(index))),
        **_size_stats(index.widths, index.heights),
    }
    if pixels is not None:
        stats["pixels"] = {"total": pixels["total"], "void": pixels["void"], "area_mismatches": pixels["area_mismatches"]}
    return stats


def _panoptic_pixels(index, json_area: dict) -> dict:
    """Pixels per label (K,) and void pixels over every PNG of `index`, and the number of segments
    whose json `area` differs from their pixel count."""
    from concurrent.futures import ThreadPoolExecutor

    from cvengine.metrics.panoptic import VOID, read_panoptic_png

    def count_ids(i: int) -> dict[int, int]:
        ids, counts = np.unique(read_panoptic_png(index.png_path(i)), return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist()))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        per_image = list(pool.map(count_ids, range(len(index))))
    by_label = np.zeros(index.num_classes, dtype=np.int64)
    total = void = mismatches = 0
    for i, found in enumerate(per_image):
        total += sum(found.values())
        void += found.get(VOID, 0)
        for sid, label, _ in index.segments[i]:
            by_label[label] += found.get(sid, 0)
            area = json_area.get((int(index.image_ids[i]), sid))
            if area is not None and area != found.get(sid, 0):
                mismatches += 1
    return {"by_label": by_label, "total": int(total), "void": int(void), "area_mismatches": mismatches}


def classification_stats(annotations_path: str | os.PathLike, data: dict | None = None) -> dict:
    """Images per class of a COCO classification file (annotations without bbox): each image's
    classes are the categories annotated in it (through ClassificationIndex, multi-label reading)."""
    from cvengine.tasks.classification.dataset import ClassificationIndex

    annotations_path = os.fspath(annotations_path)
    data = read_json(annotations_path) if data is None else data
    index = ClassificationIndex.from_coco(annotations_path, "", multi_label=True)
    coco = CocoIndex({**data, "annotations": []}, annotations_path, images_dir="")
    stats = _class_counts(index, "coco-classification", annotations_path)
    stats["num_annotations"] = len(data.get("annotations", []))
    return stats | _size_stats(coco.widths, coco.heights)


def image_folder_stats(images_dir: str | os.PathLike) -> dict:
    """Images per class of an ImageFolder layout (`images/<class>/<file>`), with image sizes read
    from the file headers (EXIF orientation applied)."""
    from cvengine.tasks.classification.dataset import ClassificationIndex
    from cvengine.data.validate import image_header_size

    images_dir = os.fspath(images_dir)
    index = ClassificationIndex.from_folders(images_dir)
    shapes = [image_header_size(index.image_path(i)) for i in range(len(index))]
    stats = _class_counts(index, "image-folder", images_dir)
    stats["num_annotations"] = len(index)
    heights = np.array([h for h, _ in shapes], dtype=np.int64)
    widths = np.array([w for _, w in shapes], dtype=np.int64)
    return stats | _size_stats(widths, heights)


def _class_counts(index, layout: str, path: str) -> dict:
    per_image = [index.labels_of(i) for i in range(len(index))]
    flat = np.concatenate(per_image) if per_image else np.zeros(0, np.int64)
    images_with = np.bincount(flat, minlength=index.num_classes)
    return {
        "layout": layout,
        "annotations_path": path,
        "num_images": len(index),
        "num_categories": index.num_classes,
        "num_images_without_class": int(sum(1 for labels in per_image if len(labels) == 0)),
        "num_images_with_several_classes": int(sum(1 for labels in per_image if len(labels) > 1)),
        "classes": [
            {"name": index.class_names[k], "id": index.label_map.category_id(k), "images": int(images_with[k])}
            for k in range(index.num_classes)
        ],
    }


def _render_classification(stats: dict) -> str:
    lines = [
        f"{stats['annotations_path']}  ({stats['layout']})",
        f"  images       {stats['num_images']}  ({stats['num_images_without_class']} without a class,"
        f" {stats['num_images_with_several_classes']} with several)",
        f"  categories   {stats['num_categories']}",
        "",
        f"  {'class':<20} {'id':>6} {'images':>8}",
    ]
    lines += [f"  {c['name'][:20]:<20} {c['id']:>6} {c['images']:>8}" for c in stats["classes"]]
    lines += [
        "",
        f"  image width  {_format_distribution(stats['image_width'])}",
        f"  image height {_format_distribution(stats['image_height'])}",
        "  image sizes  " + ", ".join(f"{s['width']}x{s['height']} ({s['count']})" for s in stats["image_sizes"]),
    ]
    return "\n".join(lines)


def _render_panoptic(stats: dict) -> str:
    pixels = stats.get("pixels")
    t, s = stats["things"], stats["stuff"]
    lines = [
        f"{stats['annotations_path']}  (COCO panoptic; PNGs: {stats['masks_dir'] or 'not found, pass --masks DIR for pixel counts'})",
        f"  images       {stats['num_images']}  ({stats['num_images_without_segments']} without segments)",
        f"  segments     {stats['num_segments']}  ({stats['num_crowd']} crowd)",
        f"  categories   {stats['num_categories']}  ({t['categories']} things, {s['categories']} stuff)",
        f"  things       {t['segments']} segments ({t['crowd']} crowd), area {t['area']}",
        f"  stuff        {s['segments']} segments ({s['crowd']} crowd), area {s['area']}",
    ]
    if pixels:
        void_share = 100.0 * pixels["void"] / pixels["total"] if pixels["total"] else 0.0
        lines.append(
            f"  pixels       {pixels['total']} ({pixels['void']} void, {void_share:.1f}%); {pixels['area_mismatches']} segments whose area differs from the PNG"
        )
    header = f"  {'class':<20} {'id':>6} {'kind':>5} {'segments':>8} {'crowd':>6} {'images':>7} {'area':>10}" + (f" {'pixels':>10}" if pixels else "")
    lines += ["", header]
    for c in stats["classes"]:
        if not c["segments"]:
            continue
        row = f"  {c['name'][:20]:<20} {c['id']:>6} {'thing' if c['isthing'] else 'stuff':>5} {c['segments']:>8} {c['crowd']:>6} {c['images']:>7} {c['area']:>10}"
        lines.append(row + (f" {c['pixels']:>10}" if pixels else ""))
    unused = sum(1 for c in stats["classes"] if not c["segments"])
    if unused:
        lines.append(f"  ({unused} categories without segments not listed)")
    lines += [
        "",
        f"  segment area {_format_distribution(stats['segment_area'])}  (non-crowd, the json's area)",
        f"  per image    {_format_distribution(stats['segments_per_image'])}",
        f"  image width  {_format_distribution(stats['image_width'])}",
        f"  image height {_format_distribution(stats['image_height'])}",
        "  image sizes  " + ", ".join(f"{s['width']}x{s['height']} ({s['count']})" for s in stats["image_sizes"]),
    ]
    return "\n".join(lines)
