"""Validate a COCO instances file and its images, reporting every problem instead of stopping at the first.

Errors are what breaks training or evaluation (or silently corrupts it); warnings are what is legal but
usually a mistake. Each problem is one line naming the file and the record:

    data/annotations.json: annotation id 17: bbox [10, 5, -3, 4] has negative width
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cvengine.data.coco import MIN_BOX_SIDE
from cvengine.data.images import read_image
from cvengine.errors import DataError

REQUIRED_KEYS = ("images", "annotations", "categories")
ERROR, WARNING = "error", "warning"


@dataclass
class Problem:
    severity: str  # ERROR or WARNING
    kind: str  # short tag grouping similar problems, e.g. "missing image file"
    message: str  # the full line, naming the file and the record


@dataclass
class Report:
    annotations_path: str
    images_dir: str
    problems: list[Problem] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    num_images_decoded: int = 0

    @property
    def errors(self) -> list[str]:
        return [p.message for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[str]:
        return [p.message for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not any(p.severity == ERROR for p in self.problems)

    def counts_by_kind(self) -> dict[str, int]:
        """`"error: missing image file" -> 3`; errors first, then in order of first appearance."""
        ordered = sorted(self.problems, key=lambda p: p.severity != ERROR)
        return dict(Counter(f"{p.severity}: {p.kind}" for p in ordered))

    def lines(self, max_per_kind: int | None = None) -> list[str]:
        """Errors first, then warnings; at most `max_per_kind` lines of each kind, then a count of the rest."""
        out: list[str] = []
        for severity in (ERROR, WARNING):
            shown: Counter = Counter()
            for p in self.problems:
                if p.severity != severity:
                    continue
                shown[p.kind] += 1
                if max_per_kind is None or max_per_kind <= 0 or shown[p.kind] <= max_per_kind:
                    out.append(f"{severity}: {p.message}")
            if max_per_kind and max_per_kind > 0:
                for kind, n in shown.items():
                    if n > max_per_kind:
                        out.append(f"{severity}: ... and {n - max_per_kind} more '{kind}' {severity}s")
        return out

    def summary(self) -> str:
        n_err, n_warn = len(self.errors), len(self.warnings)
        verdict = "OK" if self.ok else "FAILED"
        text = (
            f"{verdict}: {self.annotations_path}: {self.num_images} images ({self.num_images_decoded} decoded), "
            f"{self.num_annotations} annotations, {self.num_categories} categories; "
            f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}"
        )
        kinds = self.counts_by_kind()
        if kinds:
            text += "\n" + "\n".join(f"  {n:6d}  {kind}" for kind, n in kinds.items())
        return text


class _Collector:
    def __init__(self, report: Report, prefix: str):
        self.report = report
        self.prefix = prefix

    def error(self, kind: str, message: str) -> None:
        self.report.problems.append(Problem(ERROR, kind, f"{self.prefix}: {message}"))

    def warning(self, kind: str, message: str) -> None:
        self.report.problems.append(Problem(WARNING, kind, f"{self.prefix}: {message}"))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def _fmt(value) -> str:
    """A JSON value as the user wrote it, shortened to one readable piece of a line."""
    text = json.dumps(value, separators=(", ", ": ")) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _load(annotations_path: str, out: _Collector):
    try:
        with open(annotations_path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataError(f"annotations file not found: {annotations_path}") from None
    except IsADirectoryError:
        raise DataError(f"annotations path is a folder, not a JSON file: {annotations_path}") from None
    except OSError as err:
        raise DataError(f"cannot read annotations file {annotations_path}: {err.strerror or err}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        out.error("invalid JSON", f"not valid JSON: not UTF-8 text ({err.reason} at byte {err.start})")
    except json.JSONDecodeError as err:
        out.error("invalid JSON", f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}")
    return None


def _image_shape(path: str) -> tuple[int, int] | str:
    """(height, width) as the data loader will see it (EXIF orientation applied), or why it fails."""
    try:
        image = read_image(path)
    except DataError as err:
        return str(err)
    return int(image.shape[0]), int(image.shape[1])


def _decode_rle_counts(counts: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (pycocotools' rleFrString, which does not validate)."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("the string ends inside a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} is not part of the RLE alphabet")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and (c & 0x10):
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _check_segmentation(seg, height, width, record: str, out: _Collector) -> None:
    if isinstance(seg, list):
        if not seg:
            out.warning("empty segmentation", f"{record}: segmentation is an empty list")
            return
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                out.error("malformed segmentation", f"{record}: polygon {k} is not a list of numbers: {_fmt(poly)}")
            elif len(poly) < 6 or len(poly) % 2:
                out.error(
                    "malformed segmentation",
                    f"{record}: polygon {k} has {len(poly)} coordinates; a polygon needs an even number, at least 6",
                )
        return
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            out.error("malformed segmentation", f"{record}: RLE size {_fmt(size)} is not [height, width]")
            return
        if _is_int(height) and _is_int(width) and size != [height, width]:
            out.error(
                "malformed segmentation",
                f"{record}: RLE size {size} differs from the image's [height, width] [{height}, {width}]",
            )
        if isinstance(counts, str):
            try:
                runs = _decode_rle_counts(counts)
            except ValueError as err:
                out.error("malformed segmentation", f"{record}: RLE counts are not a valid compressed string: {err}")
                return
        elif isinstance(counts, list) and all(_is_int(v) for v in counts):
            runs = counts
        else:
            out.error("malformed segmentation", f"{record}: RLE counts must be a string or a list of integers")
            return
        if any(r < 0 for r in runs) or sum(runs) != size[0] * size[1]:
            out.error(
                "malformed segmentation",
                f"{record}: RLE runs add up to {sum(runs)} pixels (negative runs: {sum(r < 0 for r in runs)});"
                f" size {size} has {size[0] * size[1]}",
            )
        return
    out.error("malformed segmentation", f"{record}: segmentation must be a list of polygons or an RLE object, got {_fmt(seg)}")


def _check_bbox(box, height, width, iscrowd: bool, record: str, out: _Collector) -> None:
    if not (isinstance(box, list) and len(box) == 4):
        out.error("invalid bbox", f"{record}: bbox {_fmt(box)} is not [x, y, width, height]")
        return
    if not all(_is_number(v) for v in box):
        out.error("invalid bbox", f"{record}: bbox {_fmt(box)} has a value that is not a finite number")
        return
    x, y, w, h = box
    bad = [what for what, v in (("width", w), ("height", h)) if v < 0]
    if bad:
        out.error("invalid bbox", f"{record}: bbox {_fmt(box)} has negative {' and '.join(bad)}")
        return
    if w == 0 or h == 0:
        out.error("invalid bbox", f"{record}: bbox {_fmt(box)} has zero area")
        return
    if not (_is_number(width) and _is_number(height)) or width <= 0 or height <= 0:
        return  # the image record is already reported
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        out.error("invalid bbox", f"{record}: bbox {_fmt(box)} lies outside the {width}x{height} image")
        return
    if x < 0 or y < 0 or x + w > width or y + h > height:
        out.warning("bbox partly outside", f"{record}: bbox {_fmt(box)} extends past the {width}x{height} image (it is clipped)")
    if not iscrowd and (x1 - x0 <= MIN_BOX_SIDE or y1 - y0 <= MIN_BOX_SIDE):
        out.warning("tiny bbox", f"{record}: bbox {_fmt(box)} is {MIN_BOX_SIDE:g} px or less on a side after clipping; training drops it")


def _check_categories(categories, out: _Collector) -> dict[int, str]:
    known: dict[int, str] = {}
    for k, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            out.error("invalid category", f"category #{k} {_fmt(cat)} needs an integer 'id'")
            continue
        cid = cat["id"]
        if cid in known:
            out.error("duplicate category id", f"category id {cid}: appears more than once")
            continue
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            out.warning("category without name", f"category id {cid}: has no 'name'")
        known[cid] = str(name if name is not None else cid)
    return known


def _check_images(images, images_dir: str, out: _Collector, report: Report, workers: int | None) -> dict[int, dict]:
    known: dict[int, dict] = {}
    file_owner: dict[str, int] = {}
    to_decode: list[tuple[dict, str]] = []
    for k, im in enumerate(images):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            out.error("invalid image record", f"image #{k} {_fmt(im)} needs an integer 'id'")
            continue
        iid = im["id"]
        record = f"image id {iid}"
        if iid in known:
            out.error("duplicate image id", f"{record}: appears more than once ({_fmt(known[iid].get('file_name'))} and {_fmt(im.get('file_name'))})")
            continue
        known[iid] = im
        file_name = im.get("file_name")
        for key in ("width", "height"):
            if not _is_int(im.get(key)) or im[key] <= 0:
                out.error("invalid image size", f"{record}: '{key}' is {_fmt(im.get(key))}; it must be a positive integer")
        if not isinstance(file_name, str) or not file_name:
            out.error("invalid image record", f"{record}: needs a 'file_name'")
            continue
        if file_name in file_owner:
            out.warning("duplicate file name", f"{record}: file_name {file_name!r} is also used by image id {file_owner[file_name]}")
        else:
            file_owner[file_name] = iid
        path = os.path.join(images_dir, file_name)
        if not os.path.isfile(path):
            out.error("missing image file", f"{record}: image file not found: {path}")
            continue
        to_decode.append((im, path))

    # Full decode of every file: a truncated JPEG opens and reports its size, and fails only here.
    # PIL releases the GIL while decoding, so threads scale with cores.
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        shapes = list(pool.map(_image_shape, [path for _, path in to_decode]))
    for (im, path), shape in zip(to_decode, shapes):
        record = f"image id {im['id']}"
        if isinstance(shape, str):
            out.error("unreadable image", f"{record}: {shape}")
            continue
        report.num_images_decoded += 1
        height, width = shape
        if (im.get("width"), im.get("height")) != (width, height) and _is_int(im.get("width")) and _is_int(im.get("height")):
            hint = " (swapped: EXIF orientation rotates this file)" if (im["width"], im["height"]) == (height, width) else ""
            out.error(
                "image size mismatch",
                f"{record}: {path} is {width}x{height} (width x height, EXIF orientation applied) but the record says"
                f" {im['width']}x{im['height']}{hint}",
            )
    return known


def check_dataset(annotations_path: str | os.PathLike, images_dir: str | os.PathLike, workers: int | None = None) -> Report:
    """Check a COCO instances file and every image it lists; never stops at the first problem.

    Raises DataError only when there is nothing to check: the annotations file or the images folder
    cannot be opened. Everything else, including invalid JSON, becomes a line in the returned Report.
    """
    annotations_path, images_dir = os.fspath(annotations_path), os.fspath(images_dir)
    report = Report(annotations_path=annotations_path, images_dir=images_dir)
    out = _Collector(report, annotations_path)
    data = _load(annotations_path, out)
    if not os.path.isdir(images_dir):
        raise DataError(f"images folder not found: {images_dir}")
    if data is None:
        return report
    if not isinstance(data, dict):
        out.error("invalid top level", f"top level is a JSON {_json_type(data)}; COCO needs an object with {', '.join(REQUIRED_KEYS)}")
        return report

    sections = {}
    for key in REQUIRED_KEYS:
        value = data.get(key)
        if key not in data:
            out.error("missing top-level key", f"top-level key '{key}' is missing")
        elif not isinstance(value, list):
            out.error("invalid top-level key", f"top-level '{key}' is a JSON {_json_type(value)}, not an array")
        else:
            sections[key] = value
    categories, images, annotations = (sections.get(k, []) for k in ("categories", "images", "annotations"))
    report.num_categories, report.num_images, report.num_annotations = len(categories), len(images), len(annotations)

    known_categories = _check_categories(categories, out)
    known_images = _check_images(images, images_dir, out, report, workers)

    seen_ids: set[int] = set()
    annotated_images: set[int] = set()
    used_categories: set[int] = set()
    for k, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            out.error("invalid annotation", f"annotation #{k} is a JSON {_json_type(ann)}, not an object: {_fmt(ann)}")
            continue
        aid = ann.get("id")
        if not _is_int(aid):
            record = f"annotation #{k}"
            out.error("invalid annotation", f"{record}: needs an integer 'id', got {_fmt(aid)}")
        else:
            record = f"annotation id {aid}"
            if aid in seen_ids:
                out.error("duplicate annotation id", f"{record}: appears more than once")
            seen_ids.add(aid)

        image = None
        image_id = ann.get("image_id")
        if "image_id" not in ann:
            out.error("invalid annotation", f"{record}: has no 'image_id'")
        elif not _is_int(image_id) or image_id not in known_images:
            out.error("unknown image id", f"{record}: image_id {_fmt(image_id)} is not in 'images'")
        else:
            image = known_images[image_id]
            annotated_images.add(image_id)

        category_id = ann.get("category_id")
        if "category_id" not in ann:
            out.error("invalid annotation", f"{record}: has no 'category_id'")
        elif not _is_int(category_id) or category_id not in known_categories:
            out.error(
                "unknown category id",
                f"{record}: category_id {_fmt(category_id)} is not in 'categories' (known: {sorted(known_categories)})",
            )
        else:
            used_categories.add(category_id)

        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            out.error("invalid annotation", f"{record}: iscrowd {_fmt(iscrowd)} must be 0 or 1")
        height = image.get("height") if image else None
        width = image.get("width") if image else None
        if "bbox" not in ann:
            out.error("invalid bbox", f"{record}: has no 'bbox'")
        else:
            _check_bbox(ann["bbox"], height, width, bool(iscrowd == 1), record, out)
        if "segmentation" in ann:
            _check_segmentation(ann["segmentation"], height, width, record, out)
        area = ann.get("area")
        if "area" not in ann:
            out.warning("missing area", f"{record}: has no 'area' (COCO evaluation buckets objects by it)")
        elif not _is_number(area) or area < 0:
            out.error("invalid area", f"{record}: area {_fmt(area)} is not a non-negative number")

    for iid, im in known_images.items():
        if iid not in annotated_images:
            out.warning("image without annotations", f"image id {iid}: {_fmt(im.get('file_name'))} has no annotations")
    for cid, name in known_categories.items():
        if cid not in used_categories:
            out.warning("unused category", f"category id {cid} ({name!r}): has no annotations")
    return report
