"""Validate a COCO panoptic data set (json + PNG folder + images), reporting every problem:
missing or unreadable PNGs, PNGs whose size differs from the image record, segment ids of
segments_info that are absent from the PNG, ids in the PNG that segments_info does not list,
unknown category ids, duplicate segment ids and areas that disagree with the PNG."""
from __future__ import annotations

import os

import numpy as np

from cvengine.data.check import Report, _check_categories, _check_images, _Collector, _fmt, _load
from cvengine.errors import DataError
from cvengine.metrics.panoptic import VOID, read_panoptic_png


def looks_panoptic(annotations_path: str | os.PathLike) -> bool:
    """True when the file's first annotation has `segments_info` (COCO panoptic)."""
    import json

    try:
        with open(annotations_path, "rb") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return False
    annotations = data.get("annotations") if isinstance(data, dict) else None
    return bool(annotations) and isinstance(annotations[0], dict) and "segments_info" in annotations[0]


def check_panoptic(annotations_path, images_dir, masks_dir, workers: int | None = None) -> Report:
    annotations_path, images_dir, masks_dir = os.fspath(annotations_path), os.fspath(images_dir), os.fspath(masks_dir)
    report = Report(annotations_path=annotations_path, images_dir=images_dir)
    out = _Collector(report, annotations_path)
    data = _load(annotations_path, out)
    if not os.path.isdir(images_dir):
        raise DataError(f"images folder not found: {images_dir}")
    if not os.path.isdir(masks_dir):
        raise DataError(f"panoptic PNG folder not found: {masks_dir} (pass --masks DIR)")
    if data is None:
        return report
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        out.error("invalid top level", "a COCO panoptic file needs lists 'images', 'annotations' and 'categories'")
        return report
    report.num_categories, report.num_images, report.num_annotations = len(data["categories"]), len(data["images"]), len(data["annotations"])
    categories = _check_categories(data["categories"], out)
    for c in data["categories"]:
        if isinstance(c, dict) and c.get("isthing") not in (0, 1):
            out.warning("category without isthing", f"category id {c.get('id')}: 'isthing' should be 0 (stuff) or 1 (thing); got {_fmt(c.get('isthing'))}")
    images = _check_images(data["images"], images_dir, out, report, workers)
    annotated = set()
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("segments_info"), list) or "file_name" not in ann:
            out.error("invalid annotation", f"annotation #{k}: needs image_id, file_name and a segments_info list")
            continue
        image_id = ann.get("image_id")
        record = f"image id {image_id}"
        if image_id not in images:
            out.error("unknown image id", f"annotation #{k}: image_id {_fmt(image_id)} is not in 'images'")
            continue
        annotated.add(image_id)
        png_path = os.path.join(masks_dir, str(ann["file_name"]))
        if not os.path.isfile(png_path):
            out.error("missing panoptic PNG", f"{record}: panoptic PNG not found: {png_path}")
            continue
        try:
            ids = read_panoptic_png(png_path)
        except DataError as err:
            out.error("unreadable panoptic PNG", f"{record}: {err}")
            continue
        im = images[image_id]
        if (im.get("height"), im.get("width")) != ids.shape:
            out.error("mask size mismatch", f"{record}: {png_path} is {ids.shape[1]}x{ids.shape[0]} but the image record says {im.get('width')}x{im.get('height')}")
        present, counts = np.unique(ids, return_counts=True)
        area_of = dict(zip(present.tolist(), counts.tolist()))
        listed = set()
        for s in ann["segments_info"]:
            sid = s.get("id") if isinstance(s, dict) else None
            if not isinstance(sid, int):
                out.error("invalid segment", f"{record}: segment {_fmt(s)} needs an integer 'id'")
                continue
            if sid in listed:
                out.error("duplicate segment id", f"{record}: segment id {sid} appears more than once in segments_info")
            listed.add(sid)
            if s.get("category_id") not in categories:
                out.error("unknown category id", f"{record}: segment id {sid} has category_id {_fmt(s.get('category_id'))}, not in 'categories'")
            if sid not in area_of:
                out.error("segment missing from PNG", f"{record}: segment id {sid} of segments_info does not occur in {png_path}")
            elif "area" in s and s["area"] != area_of[sid]:
                out.warning("area mismatch", f"{record}: segment id {sid} has area {_fmt(s['area'])} but covers {area_of[sid]} pixels of {png_path}")
        unlisted = sorted(set(area_of) - listed - {VOID})
        if unlisted:
            out.error("unlisted segment id", f"{record}: {png_path} holds segment ids {unlisted[:5]} that segments_info does not list")
    for iid in images:
        if iid not in annotated:
            out.error("image without panoptic annotation", f"image id {iid}: no panoptic annotation (file_name + segments_info)")
    return report
