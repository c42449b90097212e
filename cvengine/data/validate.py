"""One validator for every data layout, used by `python -m cvengine.data check` and at training start.

Layouts: COCO instances (detection, instance and semantic segmentation), COCO classification (bbox
optional), ImageFolder (`images/<class>/<file>`), image + PNG mask folders (semantic segmentation),
COCO panoptic (json + PNG folder). Every problem is reported, none stops the check. Errors are what
breaks training or evaluation, or silently corrupts it; warnings are what is legal but usually a
mistake. Each problem is one line naming the file and the record:

    data/annotations.json: annotation id 17: bbox [10, 5, -3, 4] has negative width

Depth (`decode`):
    "full"    decode every image (and mask PNG): catches truncated files. `data check`.
    "header"  read only each file's header: size and EXIF orientation, no pixels. Training start.
    "none"    open no file at all: the json alone (for annotations whose images are elsewhere).

Training calls `validate_for_training(...)` then `raise_if_errors(report, where="data.train")`.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cvengine.data.coco import MIN_BOX_SIDE, hand_over
from cvengine.data.images import IMAGE_EXTENSIONS, check_pixels, read_image
from cvengine.errors import DataError, RecipeError

REQUIRED_KEYS = ("images", "annotations", "categories")
ERROR, WARNING = "error", "warning"
DECODE_MODES = ("full", "header", "none")
# Layouts `detect_layout` tells apart.
COCO, COCO_CLASSIFICATION, COCO_PANOPTIC, IMAGE_FOLDER, MASK_FOLDER = (
    "coco", "coco-classification", "coco-panoptic", "image-folder", "mask-folder")
EXIF_ORIENTATION = 0x0112
# EXIF orientations 5..8 turn the image by 90 degrees when it is read: width and height swap.
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


# ---------------------------------------------------------------------------------------------------
# The report


@dataclass
class Problem:
    severity: str  # ERROR or WARNING
    kind: str  # short tag grouping similar problems, e.g. "missing image file"
    message: str  # the full line, naming the file and the record
    record: str = ""  # the record within the file, e.g. "annotation id 17" ("" for file-level problems)
    detail: str = ""  # the message without file and record: what is wrong with the record
    where: str = ""  # the file (or folder) the message names first


@dataclass
class Report:
    annotations_path: str
    images_dir: str
    problems: list[Problem] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    num_images_decoded: int = 0  # images opened without error (pixels decoded, or header read)
    decode: str = "full"
    layout: str = COCO
    # The command that lists every problem of this data set (named in training's error).
    check_command: str = ""

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

    def warning_counts(self) -> dict[str, int]:
        """`"bbox partly outside" -> 12`, in order of first appearance."""
        return dict(Counter(p.kind for p in self.problems if p.severity == WARNING))

    def warnings_line(self, where: str) -> str:
        """One log line: `data.train: 2 warnings (1 bbox partly outside, 1 unused category)`."""
        counts = self.warning_counts()
        total = sum(counts.values())
        if not total:
            return f"{where}: no warnings"
        kinds = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        return f"{where}: {total} warning{'s' * (total != 1)} ({kinds})"

    def lines(self, max_per_kind: int | None = None, every_warning: bool = False) -> list[str]:
        """Errors, at most `max_per_kind` lines of each kind (None or 0: all) then a count of the rest;
        then each kind of warning once, with its count and first example (every_warning: one line
        per warning)."""
        out: list[str] = []
        shown: Counter = Counter()
        for p in self.problems:
            if p.severity != ERROR:
                continue
            shown[p.kind] += 1
            if not max_per_kind or max_per_kind <= 0 or shown[p.kind] <= max_per_kind:
                out.append(f"{ERROR}: {p.message}")
        if max_per_kind and max_per_kind > 0:
            for kind, n in shown.items():
                if n > max_per_kind:
                    out.append(f"{ERROR}: ... and {n - max_per_kind} more '{kind}' {ERROR}s")
        warnings = [p for p in self.problems if p.severity == WARNING]
        if every_warning:
            return out + [f"{WARNING}: {p.message}" for p in warnings]
        by_kind: dict[str, list[Problem]] = {}
        for p in warnings:
            by_kind.setdefault(p.kind, []).append(p)
        for kind, group in by_kind.items():
            out.append(f"{WARNING}: {_grouped_line(kind, group)}")
        return out

    def summary(self) -> str:
        n_err, n_warn = len(self.errors), len(self.warnings)
        verdict = "OK" if self.ok else "FAILED"
        opened = {"full": "decoded", "header": "headers read"}.get(self.decode)
        images = f"({self.num_images_decoded} {opened})" if opened else "(files not opened)"
        text = (
            f"{verdict}: {self.annotations_path}: {self.num_images} images {images}, "
            f"{self.num_annotations} annotations, {self.num_categories} categories; "
            f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}"
        )
        kinds = self.counts_by_kind()
        if kinds:
            text += "\n" + "\n".join(f"  {n:6d}  {kind}" for kind, n in kinds.items())
        return text


def _grouped_line(kind: str, group: list[Problem]) -> str:
    """One line for every problem of one kind: the count and the first example."""
    first = group[0]
    if len(group) == 1:
        return first.message
    prefix = f"{first.where}: " if first.where else ""
    if all(p.detail == first.detail for p in group):
        example = f" (e.g. {first.record})" if first.record else ""
        detail = first.detail
        if detail.startswith("has ") and first.record:
            # "has no 'area'" needs its subject: "annotation has no 'area'".
            detail = f"{re.split(r' id | #', first.record)[0]} {detail}"
        return f"{prefix}{len(group)} × {detail}{example}"
    example = f"{first.record}: {first.detail}" if first.record else first.detail
    return f"{prefix}{len(group)} × {kind} (e.g. {example})"


def raise_if_errors(report: Report, where: str) -> None:
    """Raise DataError with one line: `where`, the first error (file and record), and how many more
    there are with the command that lists them all. Warnings do not raise."""
    errors = report.errors
    if not errors:
        return
    text = f"{where}: {errors[0]}"
    if len(errors) > 1:
        rest = len(errors) - 1
        text += f" (and {rest} more error{'s' * (rest != 1)}; run {report.check_command or 'python -m cvengine.data check'})"
    raise DataError(text)


class _Collector:
    def __init__(self, report: Report, prefix: str):
        self.report = report
        self.prefix = prefix

    def _add(self, severity: str, kind: str, detail: str, record: str) -> None:
        parts = [p for p in (self.prefix, record, detail) if p]
        self.report.problems.append(Problem(severity, kind, ": ".join(parts), record, detail, self.prefix))

    def error(self, kind: str, detail: str, record: str = "") -> None:
        self._add(ERROR, kind, detail, record)

    def warning(self, kind: str, detail: str, record: str = "") -> None:
        self._add(WARNING, kind, detail, record)


# ---------------------------------------------------------------------------------------------------
# Values


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


def _not_integer(key: str, value, section: str | None = None) -> str | None:
    """Why `value` is not an integer id, and what to write instead; None when it is one. section:
    the top-level list whose ids `key` refers to."""
    if _is_int(value):
        return None
    shown = f"{key} {_fmt(value)}"
    use = f"; use the integer 'id' of one of '{section}'" if section else "; ids are integers"
    if isinstance(value, bool):
        return f"{shown} is a boolean{use}"
    if isinstance(value, float) and math.isfinite(value):
        if value.is_integer():
            return f"{shown} is a float; write the integer {int(value)}"
        return f"{shown} is not an integer{use} (training would truncate it to {int(value)})"
    if isinstance(value, float):
        return f"{shown} is not an integer{use}"
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return f"{shown} is a string; write the number {int(value)} without quotes"
    return f"{shown} is a JSON {_json_type(value)}, not an integer{use}"


def _not_a_number(value) -> str:
    if isinstance(value, bool):
        return f"{_fmt(value)} (a boolean)"
    if isinstance(value, str):
        return f"{value!r} (a string; write numbers without quotes)"
    if isinstance(value, float):
        return _fmt(value)  # NaN, Infinity, -Infinity
    return f"{_fmt(value)} (a JSON {_json_type(value)})"


def _iscrowd_problem(value) -> str | None:
    if _is_int(value) and value in (0, 1):
        return None
    if isinstance(value, bool):
        hint = f"; write {int(value)}, not the boolean"
    elif isinstance(value, float) and value in (0, 1):
        hint = f"; write the integer {int(value)}"
    elif isinstance(value, str):
        hint = " (a string, which training would read as crowd); write 0 for an object, 1 for a crowd region"
    else:
        hint = ": 0 for an object, 1 for a crowd region"
    return f"iscrowd {_fmt(value)} must be 0 or 1{hint}"


_DRIVE = re.compile(r"^[A-Za-z]:")


def _outside(file_name: str) -> bool:
    """True when `file_name` joined to its folder does not stay inside it: an absolute path (POSIX,
    Windows drive or UNC) or a '..' part. Sub-folders are fine."""
    return file_name.startswith(("/", "\\")) or bool(_DRIVE.match(file_name)) or ".." in re.split(r"[\\/]", file_name)


# ---------------------------------------------------------------------------------------------------
# Files


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
        # utf-8-sig: a byte-order mark is accepted, as the training parser accepts it.
        document = json.loads(raw.decode("utf-8-sig"))
        hand_over(annotations_path, document)
        return document
    except UnicodeDecodeError as err:
        out.error("invalid JSON", f"not valid JSON: not UTF-8 text ({err.reason} at byte {err.start})")
    except json.JSONDecodeError as err:
        out.error("invalid JSON", f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}")
    return None


def _header_orientation(image) -> int:
    if image.format == "PNG" and "exif" not in image.info:
        # PngImageFile.getexif decodes every pixel to look for an eXIf chunk after the image data;
        # the base class reads what the header gave (eXIf before IDAT, XMP), which writers use.
        from PIL import Image

        return int(Image.Image.getexif(image).get(EXIF_ORIENTATION, 1) or 1)
    return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)


def image_header_size(path: str, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) as `read_image` will return it (EXIF orientation applied), from the file's
    header only. Raises DataError naming the file, also for an image above `max_pixels`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            check_pixels(path, width, height, max_pixels)
            # Pillow gives a TIFF its oriented size on open already (and turns it when loading).
            if image.format != "TIFF" and _header_orientation(image) in SWAPPING_ORIENTATIONS:
                width, height = height, width
            return height, width
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"image {path} is too large to decode safely: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None


def _image_shape(path: str, decode: str = "full") -> tuple[int, int] | str:
    """(height, width) as the data loader will see it (EXIF orientation applied), or why it fails."""
    try:
        if decode == "header":
            return image_header_size(path)
        image = read_image(path)
    except DataError as err:
        return str(err)
    return int(image.shape[0]), int(image.shape[1])


def _pool_map(fn: Callable, items: list, workers: int | None) -> list:
    """[fn(x) for x in items] on threads: PIL releases the GIL while decoding, and header reads wait
    on the file system (network volumes above all). Items go in chunks: one future per item costs
    as much as reading a header."""
    workers = workers or min(8, os.cpu_count() or 1)
    if workers == 1 or len(items) < 2:
        return [fn(x) for x in items]
    size = max(1, min(256, len(items) // (4 * workers)))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [y for chunk in pool.map(lambda c: [fn(x) for x in c], chunks) for y in chunk]


def _check_decode(decode: str) -> None:
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}; got {decode!r}")


def _command(*parts) -> str:
    return shlex.join(["python", "-m", "cvengine.data", "check", *[os.fspath(p) for p in parts if p is not None]])


# ---------------------------------------------------------------------------------------------------
# COCO records


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
            out.warning("empty segmentation", "segmentation is an empty list", record)
            return
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                out.error("malformed segmentation", f"polygon {k} is not a list of numbers: {_fmt(poly)}", record)
            elif len(poly) < 6 or len(poly) % 2:
                out.error("malformed segmentation", f"polygon {k} has {len(poly)} coordinates; a polygon needs an even number, at least 6", record)
        return
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            out.error("malformed segmentation", f"RLE size {_fmt(size)} is not [height, width]", record)
            return
        if _is_int(height) and _is_int(width) and size != [height, width]:
            out.error("malformed segmentation", f"RLE size {size} differs from the image's [height, width] [{height}, {width}]", record)
        if isinstance(counts, str):
            try:
                runs = _decode_rle_counts(counts)
            except ValueError as err:
                out.error("malformed segmentation", f"RLE counts are not a valid compressed string: {err}", record)
                return
        elif isinstance(counts, list) and all(_is_int(v) for v in counts):
            runs = counts
        else:
            out.error("malformed segmentation", "RLE counts must be a string or a list of integers", record)
            return
        if any(r < 0 for r in runs) or sum(runs) != size[0] * size[1]:
            out.error(
                "malformed segmentation",
                f"RLE runs add up to {sum(runs)} pixels (negative runs: {sum(r < 0 for r in runs)}); size {size} has {size[0] * size[1]}",
                record,
            )
        return
    out.error("malformed segmentation", f"segmentation must be a list of polygons or an RLE object, got {_fmt(seg)}", record)


def _check_bbox(box, height, width, iscrowd: bool, record: str, out: _Collector) -> None:
    if not (isinstance(box, list) and len(box) == 4):
        out.error("invalid bbox", f"bbox {_fmt(box)} is not [x, y, width, height]", record)
        return
    bad = [(name, v) for name, v in zip(("x", "y", "width", "height"), box) if not _is_number(v)]
    if bad:
        what = ", ".join(f"{name} is {_not_a_number(v)}" for name, v in bad)
        out.error("invalid bbox", f"bbox {_fmt(box)} has a value that is not a finite number: {what}", record)
        return
    x, y, w, h = box
    negative = [what for what, v in (("width", w), ("height", h)) if v < 0]
    if negative:
        out.error("invalid bbox", f"bbox {_fmt(box)} has negative {' and '.join(negative)}", record)
        return
    if w == 0 or h == 0:
        out.error("invalid bbox", f"bbox {_fmt(box)} has zero area", record)
        return
    if not (_is_number(width) and _is_number(height)) or width <= 0 or height <= 0:
        return  # the image's size is unknown here, or already reported
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        out.error("invalid bbox", f"bbox {_fmt(box)} lies outside the {width}x{height} image", record)
        return
    if x < 0 or y < 0 or x + w > width or y + h > height:
        out.warning("bbox partly outside", f"bbox {_fmt(box)} extends past the {width}x{height} image (it is clipped)", record)
    if not iscrowd and (x1 - x0 <= MIN_BOX_SIDE or y1 - y0 <= MIN_BOX_SIDE):
        out.warning("tiny bbox", f"bbox {_fmt(box)} is {MIN_BOX_SIDE:g} px or less on a side after clipping; training drops it", record)


def _check_categories(categories, out: _Collector) -> dict[int, str]:
    known: dict[int, str] = {}
    for k, cat in enumerate(categories):
        problem = _not_integer("id", cat.get("id")) if isinstance(cat, dict) else "is not an object"
        if problem:
            out.error("invalid category", f"category #{k} {_fmt(cat)} needs an integer 'id': {problem}")
            continue
        cid = cat["id"]
        if cid in known:
            out.error("duplicate category id", "appears more than once", f"category id {cid}")
            continue
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            out.warning("category without name", "has no 'name'", f"category id {cid}")
        known[cid] = str(name if name is not None else cid)
    return known


def _check_images(images, images_dir: str | None, out: _Collector, report: Report, decode: str, workers: int | None) -> tuple[dict[int, dict], dict[int, tuple[int, int]]]:
    """Image records by id, and (width, height) by id where known: from a valid record, or from the
    file when the record has none (what the training parser does). Unless decode="none", every file
    is opened and its size, EXIF orientation applied, compared with the record's."""
    known: dict[int, dict] = {}
    sizes: dict[int, tuple[int, int]] = {}
    file_owner: dict[str, int] = {}
    to_open: list[tuple[int, str]] = []
    for k, im in enumerate(images):
        problem = _not_integer("id", im.get("id")) if isinstance(im, dict) else "is not an object"
        if problem:
            out.error("invalid image record", f"image #{k} {_fmt(im)} needs an integer 'id': {problem}")
            continue
        iid = im["id"]
        record = f"image id {iid}"
        if iid in known:
            out.error("duplicate image id", f"appears more than once ({_fmt(known[iid].get('file_name'))} and {_fmt(im.get('file_name'))})", record)
            continue
        known[iid] = im
        for key in ("width", "height"):
            if key in im and (not _is_int(im[key]) or im[key] <= 0):
                out.error("invalid image size", f"'{key}' is {_fmt(im[key])}; it must be a positive integer", record)
        if "width" not in im or "height" not in im:
            how = "taken from the file's header" if decode != "none" else "the images are not opened, so boxes are not checked against it"
            out.warning("image without size", f"has no 'width'/'height' ({how})", record)
        elif all(_is_int(im[key]) and im[key] > 0 for key in ("width", "height")):
            sizes[iid] = (im["width"], im["height"])
        file_name = im.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            out.error("invalid image record", "needs a 'file_name'", record)
            continue
        if _outside(file_name):
            folder = f" {images_dir}" if images_dir else ""
            out.error(
                "file outside images folder",
                f"file_name {file_name!r} points outside the images folder{folder}; give a path relative to that folder"
                " (sub-folders are fine, '..' and absolute paths are not)",
                record,
            )
            continue
        if file_name in file_owner:
            out.warning("duplicate file name", f"file_name {file_name!r} is also used by image id {file_owner[file_name]}", record)
        else:
            file_owner[file_name] = iid
        if decode == "none":
            continue
        path = os.path.join(images_dir, file_name)
        if not os.path.isfile(path):
            out.error("missing image file", f"image file not found: {path}", record)
            continue
        to_open.append((iid, path))

    # decode="full" decodes every file: a truncated JPEG opens and reports its size, and fails only
    # when decoded. decode="header" reads size and EXIF orientation only.
    shapes = _pool_map(lambda path: _image_shape(path, decode), [path for _, path in to_open], workers)
    for (iid, path), shape in zip(to_open, shapes):
        im, record = known[iid], f"image id {iid}"
        if isinstance(shape, str):
            out.error("unreadable image", shape, record)
            continue
        report.num_images_decoded += 1
        height, width = shape
        if "width" not in im or "height" not in im:
            sizes[iid] = (width, height)
        elif iid in sizes and sizes[iid] != (width, height):
            w_rec, h_rec = sizes[iid]
            hint = " (swapped: EXIF orientation rotates this file)" if (w_rec, h_rec) == (height, width) else ""
            out.error(
                "image size mismatch",
                f"{path} is {width}x{height} (width x height, EXIF orientation applied) but the record says {w_rec}x{h_rec}{hint}",
                record,
            )
    return known, sizes


def _sections(data, out: _Collector) -> dict[str, list] | None:
    """The three top-level lists of a COCO file (missing or malformed ones reported, and empty here)."""
    if not isinstance(data, dict):
        out.error("invalid top level", f"top level is a JSON {_json_type(data)}; COCO needs an object with {', '.join(REQUIRED_KEYS)}")
        return None
    sections = {}
    for key in REQUIRED_KEYS:
        value = data.get(key)
        if key not in data:
            out.error("missing top-level key", f"top-level key '{key}' is missing")
        elif not isinstance(value, list):
            out.error("invalid top-level key", f"top-level '{key}' is a JSON {_json_type(value)}, not an array")
        else:
            sections[key] = value
    return {key: sections.get(key, []) for key in REQUIRED_KEYS}


def _check_reference(ann: dict, key: str, section: str, known, record: str, out: _Collector, kind: str) -> bool:
    """ann[key] names a record of `section`: present, an integer, and known. Reports and returns False otherwise."""
    value = ann.get(key)
    if key not in ann:
        out.error("invalid annotation", f"has no '{key}'", record)
        return False
    problem = _not_integer(key, value, section)
    if problem:
        out.error("non-integer id", problem, record)
        return False
    if value not in known:
        extra = f" (known: {sorted(known)})" if section == "categories" else ""
        out.error(kind, f"{key} {value} is not in '{section}'{extra}", record)
        return False
    return True


def _annotation_record(k: int, ann: dict, seen_ids: set, out: _Collector) -> str:
    aid = ann.get("id")
    problem = _not_integer("id", aid)
    if problem:
        record = f"annotation #{k}"
        out.error("invalid annotation", f"needs an integer 'id': {problem}", record)
        return record
    record = f"annotation id {aid}"
    if aid in seen_ids:
        out.error("duplicate annotation id", "appears more than once", record)
    seen_ids.add(aid)
    return record


def _check_coco(data, images_dir: str | None, report: Report, out: _Collector, task: str | None,
                decode: str, workers: int | None, multi_label: bool | None) -> None:
    """COCO instances (task None, detection, instance/semantic segmentation) or, for task
    "classification", COCO classification: image_id and category_id per annotation, bbox unused."""
    sections = _sections(data, out)
    if sections is None:
        return
    categories, images, annotations = sections["categories"], sections["images"], sections["annotations"]
    report.num_categories, report.num_images, report.num_annotations = len(categories), len(images), len(annotations)
    known_categories = _check_categories(categories, out)
    known_images, sizes = _check_images(images, images_dir, out, report, decode, workers)
    classification = task == "classification"
    needs_mask = task in ("instance_segmentation", "semantic_segmentation")

    seen_ids: set[int] = set()
    annotated: set[int] = set()
    classes_of: dict[int, set[int]] = {}  # image id -> its valid category ids
    used_categories: set[int] = set()
    for k, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            out.error("invalid annotation", f"annotation #{k} is a JSON {_json_type(ann)}, not an object: {_fmt(ann)}")
            continue
        record = _annotation_record(k, ann, seen_ids, out)
        image_id = ann.get("image_id")
        image_ok = _check_reference(ann, "image_id", "images", known_images, record, out, "unknown image id")
        if image_ok:
            annotated.add(image_id)
        if _check_reference(ann, "category_id", "categories", known_categories, record, out, "unknown category id"):
            used_categories.add(ann["category_id"])
            if image_ok:
                classes_of.setdefault(image_id, set()).add(ann["category_id"])
        if classification:
            continue
        iscrowd = ann.get("iscrowd", 0)
        problem = _iscrowd_problem(iscrowd)
        if problem:
            out.error("invalid iscrowd", problem, record)
        width, height = sizes.get(image_id, (None, None)) if image_ok else (None, None)
        if "bbox" not in ann:
            out.error("invalid bbox", "has no 'bbox'", record)
        else:
            _check_bbox(ann["bbox"], height, width, iscrowd == 1 and problem is None, record, out)
        if "segmentation" in ann and ann["segmentation"] is not None:
            _check_segmentation(ann["segmentation"], height, width, record, out)
        elif needs_mask:
            out.error("missing segmentation", f"has no 'segmentation'; {task} needs a mask (polygons or RLE) per annotation", record)
        area = ann.get("area")
        if "area" not in ann:
            out.warning("missing area", "has no 'area' (COCO evaluation buckets objects by it)", record)
        elif not _is_number(area) or area < 0:
            out.error("invalid area", f"area {_fmt(area)} is not a non-negative number", record)

    for iid, im in known_images.items():
        found = classes_of.get(iid, set())
        file_name = _fmt(im.get("file_name"))
        if iid in annotated and not found:
            continue  # its annotations' category ids are reported
        if classification and multi_label is False and not found:
            out.error("image without class", f"{file_name} has no annotation, so no class; annotate it or remove it", f"image id {iid}")
        elif not found:
            out.warning("image without annotations", f"{file_name} has no annotations", f"image id {iid}")
        elif classification and not multi_label and len(found) > 1:
            names = [known_categories[c] for c in sorted(found)]
            detail = f"{file_name} has annotations of several classes {names}; set model.multi_label = true for multi-label data"
            if multi_label is False:
                out.error("image with several classes", detail, f"image id {iid}")
            else:
                out.warning("image with several classes", detail, f"image id {iid}")
    for cid, name in known_categories.items():
        if cid not in used_categories:
            out.warning("unused category", "has no annotations", f"category id {cid} ({name!r})")
    if task == "semantic_segmentation":
        _check_semantic_categories(known_categories, out)


def _check_semantic_categories(known_categories: dict[int, str], out: _Collector) -> None:
    """Label 0 is the background cvengine adds (category id 0), unless a category is named
    'background'; a label map holds at most 255 classes (255 marks ignored pixels)."""
    from cvengine.data.masks import IGNORE
    from cvengine.data.masks import BACKGROUND

    has_background = any(name.lower() == BACKGROUND for name in known_categories.values())
    if 0 in known_categories and not has_background:
        out.error(
            "category id 0",
            "would collide with the background class cvengine adds as label 0 (category id 0); renumber the categories"
            " from 1, or name that category 'background'",
            f"category id 0 ({known_categories[0]!r})",
        )
    num_classes = len(known_categories) + (0 if has_background else 1)
    if num_classes >= IGNORE:
        out.error("too many classes", f"{num_classes} classes with the background; label maps hold at most {IGNORE} (255 marks ignored pixels)")


# ---------------------------------------------------------------------------------------------------
# COCO panoptic


def _png_header(path: str) -> tuple[int, int] | str:
    """(height, width) of a PNG from its header, or why it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"cannot read panoptic PNG {path}: {err}"


def _check_panoptic_png(args) -> list[tuple[str, str, str]]:
    """Problems (severity, kind, detail) of one panoptic annotation's PNG against its segments_info."""
    from cvengine.metrics.panoptic import VOID, read_panoptic_png

    png_path, size, segments, decode = args
    if decode == "header":
        shape = _png_header(png_path)
        if isinstance(shape, str):
            return [(ERROR, "unreadable panoptic PNG", shape)]
        if size is not None and shape != size:
            return [(ERROR, "mask size mismatch", f"{png_path} is {shape[1]}x{shape[0]} but the image record says {size[1]}x{size[0]}")]
        return []
    try:
        ids = read_panoptic_png(png_path)
    except DataError as err:
        return [(ERROR, "unreadable panoptic PNG", str(err))]
    problems = []
    if size is not None and ids.shape != size:
        problems.append((ERROR, "mask size mismatch", f"{png_path} is {ids.shape[1]}x{ids.shape[0]} but the image record says {size[1]}x{size[0]}"))
    present, counts = np.unique(ids, return_counts=True)
    area_of = dict(zip(present.tolist(), counts.tolist()))
    for sid, area in segments:
        if sid not in area_of:
            problems.append((ERROR, "segment missing from PNG", f"segment id {sid} of segments_info does not occur in {png_path}"))
        elif area is not None and area != area_of[sid]:
            problems.append((WARNING, "area mismatch", f"segment id {sid} has area {_fmt(area)} but covers {area_of[sid]} pixels of {png_path}"))
    unlisted = sorted(set(area_of) - {sid for sid, _ in segments} - {VOID})
    if unlisted:
        problems.append((ERROR, "unlisted segment id", f"{png_path} holds segment ids {unlisted[:5]} that segments_info does not list"))
    return problems


def _check_panoptic(data, images_dir: str | None, masks_dir: str | None, report: Report, out: _Collector,
                    decode: str, workers: int | None) -> None:
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in REQUIRED_KEYS):
        out.error("invalid top level", "a COCO panoptic file needs lists 'images', 'annotations' and 'categories'")
        return
    report.num_categories, report.num_images, report.num_annotations = len(data["categories"]), len(data["images"]), len(data["annotations"])
    categories = _check_categories(data["categories"], out)
    for c in data["categories"]:
        if isinstance(c, dict) and c.get("id") in categories and not (_is_int(c.get("isthing")) and c["isthing"] in (0, 1)):
            out.warning("category without isthing", f"'isthing' should be 0 (stuff) or 1 (thing); got {_fmt(c.get('isthing'))}", f"category id {c.get('id')}")
    images, sizes = _check_images(data["images"], images_dir, out, report, decode, workers)
    annotated: set[int] = set()
    pngs = []
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("segments_info"), list) or "file_name" not in ann:
            out.error("invalid annotation", f"annotation #{k}: needs image_id, file_name and a segments_info list")
            continue
        image_id = ann.get("image_id")
        problem = _not_integer("image_id", image_id, "images")
        if problem:
            out.error("non-integer id", problem, f"annotation #{k}")
            continue
        record = f"image id {image_id}"
        if image_id not in images:
            out.error("unknown image id", f"image_id {image_id} is not in 'images'", f"annotation #{k}")
            continue
        if image_id in annotated:
            out.error("duplicate panoptic annotation", "has more than one panoptic annotation", record)
            continue
        annotated.add(image_id)
        segments = _check_segments(ann["segments_info"], categories, record, out)
        png_name = ann["file_name"]
        if not isinstance(png_name, str) or not png_name:
            out.error("invalid annotation", f"file_name {_fmt(png_name)} must name the annotation's PNG", record)
            continue
        if _outside(png_name):
            out.error(
                "file outside masks folder",
                f"file_name {png_name!r} points outside the panoptic PNG folder {masks_dir or ''}".rstrip()
                + "; give a path relative to that folder (sub-folders are fine, '..' and absolute paths are not)",
                record,
            )
            continue
        if decode == "none":
            continue
        png_path = os.path.join(masks_dir, png_name)
        if not os.path.isfile(png_path):
            out.error("missing panoptic PNG", f"panoptic PNG not found: {png_path}", record)
            continue
        size = sizes.get(image_id)
        pngs.append((record, (png_path, None if size is None else (size[1], size[0]), segments, decode)))
    for (record, _), problems in zip(pngs, _pool_map(_check_panoptic_png, [a for _, a in pngs], workers)):
        for severity, kind, detail in problems:
            (out.error if severity == ERROR else out.warning)(kind, detail, record)
    for iid in images:
        if iid not in annotated:
            out.error("image without panoptic annotation", "no panoptic annotation (file_name + segments_info)", f"image id {iid}")


def _check_segments(segments_info: list, categories: dict, record: str, out: _Collector) -> list[tuple[int, object]]:
    """(segment id, area or None) of the valid segments of one panoptic annotation."""
    listed: dict[int, object] = {}
    for s in segments_info:
        sid = s.get("id") if isinstance(s, dict) else None
        if not _is_int(sid):
            out.error("invalid segment", f"segment {_fmt(s)} needs an integer 'id'", record)
            continue
        if sid in listed:
            out.error("duplicate segment id", f"segment id {sid} appears more than once in segments_info", record)
            continue
        cid = s.get("category_id")
        problem = _not_integer("category_id", cid, "categories")
        if problem:
            out.error("non-integer id", f"segment id {sid}: {problem}", record)
        elif cid not in categories:
            out.error("unknown category id", f"segment id {sid} has category_id {_fmt(cid)}, not in 'categories'", record)
        problem = _iscrowd_problem(s.get("iscrowd", 0))
        if problem:
            out.error("invalid iscrowd", f"segment id {sid}: {problem}", record)
        listed[sid] = s.get("area")
    return list(listed.items())


# ---------------------------------------------------------------------------------------------------
# Folder layouts


def _images_under(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.relpath(os.path.join(root, f), folder) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    return found


def check_image_folder(images_dir: str | os.PathLike, decode: str = "full", workers: int | None = None) -> Report:
    """ImageFolder classification (`images/<class>/<file>`): class folders present, each with images,
    every image readable. Files that training does not read (beside the class folders, or in folders
    below them) are reported."""
    from cvengine.data.images import image_folder_classes

    _check_decode(decode)
    images_dir = os.fspath(images_dir)
    report = Report(annotations_path=images_dir, images_dir=images_dir, decode=decode, layout=IMAGE_FOLDER, check_command=_command(images_dir))
    out = _Collector(report, images_dir)
    classes = image_folder_classes(images_dir)
    report.num_categories = len(classes)
    stray = [e for e in os.listdir(images_dir) if os.path.isfile(os.path.join(images_dir, e)) and e.lower().endswith(IMAGE_EXTENSIONS)]
    for name in sorted(stray):
        out.warning("image outside class folders", "not in a class folder; it is not used", name)
    paths = []
    for name in classes:
        files = _images_under(os.path.join(images_dir, name))
        direct = [f for f in files if os.sep not in f]
        for nested in (f for f in files if os.sep in f):
            out.warning("image in a nested folder", "only files directly in a class folder are read; it is not used", os.path.join(name, nested))
        if not direct:
            out.warning("empty class folder", f"class folder '{name}' has no images")
        paths.extend(os.path.join(images_dir, name, f) for f in direct)
    report.num_images = report.num_annotations = len(paths)
    if decode == "none":
        return report
    for path, shape in zip(paths, _pool_map(lambda p: _image_shape(p, decode), paths, workers)):
        if isinstance(shape, str):
            out.error("unreadable image", shape)
        else:
            report.num_images_decoded += 1
    return report


def _check_mask_pair(args) -> list[tuple[str, str]]:
    from PIL import Image, UnidentifiedImageError

    from cvengine.data.masks import read_label_png, remap_png_labels

    image_path, mask_path, num_classes, ignore_index, reduce_labels, decode = args
    problems = []
    shape = _image_shape(image_path, decode)
    if isinstance(shape, str):
        problems.append(("unreadable image", shape))
    if not os.path.isfile(mask_path):
        return problems + [("missing mask", f"{os.path.basename(mask_path)}: no mask for image {image_path}")]
    if decode == "header":
        try:
            with Image.open(mask_path) as mask:
                mask_shape, mode = (mask.size[1], mask.size[0]), mask.mode
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            return problems + [("invalid mask", f"cannot read mask {mask_path}: {err}")]
        if mode in ("RGB", "RGBA", "LA", "CMYK"):
            return problems + [("invalid mask", f"mask {mask_path} is a {mode} colour image; masks must hold one label id per pixel (PNG mode L, P or I;16)")]
    else:
        try:
            values = read_label_png(mask_path)
            remap_png_labels(values, num_classes, ignore_index, reduce_labels, mask_path)
        except DataError as err:
            return problems + [("invalid mask", str(err))]
        mask_shape = values.shape
    if not isinstance(shape, str) and mask_shape != shape:
        problems.append(("mask size mismatch", f"mask {mask_path} is {mask_shape[1]}x{mask_shape[0]} but image {image_path} is {shape[1]}x{shape[0]} (width x height)"))
    return problems


def check_mask_folder(images_dir: str | os.PathLike, masks_dir: str | os.PathLike, num_classes: int, ignore_index: int = 255,
                      reduce_labels: bool = False, workers: int | None = None, decode: str = "full", labels_path: str | None = None) -> Report:
    """Image + PNG mask folders: every image has a mask `<masks>/<image path without extension>.png`
    that reads, is single channel and has the image's size; decode="full" also checks that it holds
    only label ids 0..K-1 (after reduce_labels) or the ignore value."""
    _check_decode(decode)
    images_dir, masks_dir = os.fspath(images_dir), os.fspath(masks_dir)
    if not os.path.isdir(images_dir):
        raise DataError(f"images folder not found: {images_dir}")
    if not os.path.isdir(masks_dir):
        raise DataError(f"masks folder not found: {masks_dir}")
    command = _command(images_dir, "--masks", masks_dir, "--labels", labels_path or "LABELS")
    report = Report(annotations_path=masks_dir, images_dir=images_dir, decode=decode, layout=MASK_FOLDER, check_command=command)
    report.num_categories = num_classes
    out = _Collector(report, masks_dir)
    files = _images_under(images_dir)
    report.num_images = len(files)
    if not files:
        out.error("no images", f"{images_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if decode == "none":
        return report
    jobs = [(os.path.join(images_dir, f), os.path.join(masks_dir, os.path.splitext(f)[0] + ".png"), num_classes, ignore_index, reduce_labels, decode) for f in files]
    results = _pool_map(_check_mask_pair, jobs, workers)
    for problems in results:
        if not any(kind == "unreadable image" for kind, _ in problems):
            report.num_images_decoded += 1
        for kind, message in problems:
            out.error(kind, message)
    known = {os.path.splitext(f)[0] for f in files}
    for mask in _images_under(masks_dir):
        if os.path.splitext(mask)[0] not in known:
            out.warning("mask without image", f"no image with this name in {images_dir}", mask)
    report.num_annotations = len(files) - sum(1 for p in results if any(k == "missing mask" for k, _ in p))
    return report


# ---------------------------------------------------------------------------------------------------
# Entry points


def detect_layout(data) -> str:
    """The layout of a parsed annotations file: COCO panoptic when its first annotation has
    `segments_info`; COCO classification when annotations exist and none has a 'bbox'; else COCO."""
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list) or not annotations:
        return COCO
    first = annotations[0]
    if isinstance(first, dict) and "segments_info" in first:
        return COCO_PANOPTIC
    if all(isinstance(a, dict) and "bbox" not in a for a in annotations):
        return COCO_CLASSIFICATION
    return COCO


def _start(annotations_path, images_dir, decode: str, layout: str, command: str):
    _check_decode(decode)
    annotations_path = os.fspath(annotations_path)
    images_dir = None if images_dir is None else os.fspath(images_dir)
    report = Report(annotations_path=annotations_path, images_dir=images_dir or "", decode=decode, layout=layout, check_command=command)
    return annotations_path, images_dir, report, _Collector(report, annotations_path)


def _require_folder(folder: str | None, decode: str, what: str, flag: str) -> None:
    if decode == "none":
        return
    if folder is None:
        raise DataError(f"checking the {what} needs {flag} DIR (or decode none to open no file)")
    if not os.path.isdir(folder):
        raise DataError(f"{what} not found: {folder}")


def check_dataset(annotations_path: str | os.PathLike, images_dir: str | os.PathLike | None, workers: int | None = None,
                  decode: str = "full", task: str | None = None, multi_label: bool | None = None, data=None) -> Report:
    """Check a COCO instances (or, with task "classification", COCO classification) file and every
    image it lists; never stops at the first problem.

    task: None (any COCO instances use), "detection", "instance_segmentation" and
    "semantic_segmentation" (a segmentation per annotation), "classification" (bbox not needed;
    multi_label False makes images without a class or with several classes errors, None warnings).
    data: the file already parsed (saves parsing it twice). images_dir may be None with decode="none".
    Raises DataError only when there is nothing to check: the annotations file or the images folder
    cannot be opened. Everything else, including invalid JSON, becomes a line in the returned Report.
    """
    layout = COCO_CLASSIFICATION if task == "classification" else COCO
    command = _command(annotations_path, "--images", images_dir, *(("--task", task) if task else ()), *(("--decode", decode) if decode == "none" else ()))
    annotations_path, images_dir, report, out = _start(annotations_path, images_dir, decode, layout, command)
    if data is None:
        data = _load(annotations_path, out)
    _require_folder(images_dir, decode, "images folder", "--images")
    if data is not None:
        _check_coco(data, images_dir, report, out, task, decode, workers, multi_label)
    return report


def check_panoptic(annotations_path, images_dir, masks_dir, workers: int | None = None, decode: str = "full", data=None) -> Report:
    """Check a COCO panoptic data set (json + PNG folder + images): missing or unreadable PNGs, PNGs
    whose size differs from the image record, segment ids of segments_info absent from the PNG, ids
    in the PNG that segments_info does not list, unknown category ids, duplicate segment ids and
    areas that disagree with the PNG (the last three need decode="full")."""
    command = _command(annotations_path, "--images", images_dir, "--masks", masks_dir, *(("--decode", decode) if decode == "none" else ()))
    annotations_path, images_dir, report, out = _start(annotations_path, images_dir, decode, COCO_PANOPTIC, command)
    masks_dir = None if masks_dir is None else os.fspath(masks_dir)
    if data is None:
        data = _load(annotations_path, out)
    _require_folder(images_dir, decode, "images folder", "--images")
    _require_folder(masks_dir, decode, "panoptic PNG folder", "--masks")
    if data is not None:
        _check_panoptic(data, images_dir, masks_dir, report, out, decode, workers)
    return report


def check(annotations: str | os.PathLike, images: str | os.PathLike | None = None, masks: str | os.PathLike | None = None,
          labels=None, task: str | None = None, decode: str = "full", workers: int | None = None, ignore_index: int = 255,
          reduce_labels: bool = False, multi_label: bool | None = None) -> Report:
    """`python -m cvengine.data check`: detect the layout and check it.

    annotations a folder: image + PNG masks (with masks and labels) or ImageFolder. A file: COCO
    panoptic (masks given, task "panoptic_segmentation", or segments_info in the file), COCO
    classification (task "classification", or no annotation has a bbox), else COCO instances.
    """
    annotations = os.fspath(annotations)
    if os.path.isdir(annotations):
        if masks is None:
            return check_image_folder(annotations, decode=decode, workers=workers)
        if labels is None:
            raise DataError("checking a mask folder needs the class names by label id (--labels FILE) to know the valid label ids")
        from cvengine.data.masks import read_class_names

        names = read_class_names(labels, where="--labels")
        labels_path = labels if isinstance(labels, (str, os.PathLike)) else None
        return check_mask_folder(annotations, masks, len(names), ignore_index, reduce_labels, workers, decode, labels_path)
    parse = Report(annotations_path=annotations, images_dir="")
    data = _load(annotations, _Collector(parse, annotations))
    if data is None:
        parse.decode, parse.check_command = decode, _command(annotations)
        _require_folder(None if images is None else os.fspath(images), decode, "images folder", "--images")
        return parse
    layout = detect_layout(data)
    if masks is not None or task == "panoptic_segmentation" or layout == COCO_PANOPTIC:
        if masks is None:
            # COCO's layout: panoptic_val2017.json beside the folder panoptic_val2017/.
            masks = os.path.splitext(os.path.abspath(annotations))[0]
        return check_panoptic(annotations, images, masks, workers, decode, data=data)
    if task is None and layout == COCO_CLASSIFICATION:
        task = "classification"
    return check_dataset(annotations, images, workers, decode, task, multi_label, data=data)


def validate_for_training(task: str, split: str, annotations: str | os.PathLike | None, images: str | os.PathLike,
                          masks: str | os.PathLike | None = None, labels=None, *, ignore_index: int = 255,
                          reduce_labels: bool = False, multi_label: bool = False, decode: str = "header",
                          workers: int | None = None, data=None) -> Report:
    """The check training runs on one split before anything is written, with the task's rules:
    header-only by default (each image's size and EXIF orientation, no pixel decode).

    annotations: the COCO (or panoptic) json; None for ImageFolder classification and PNG-mask
    semantic segmentation. masks: the panoptic PNG folder, or the semantic label PNG folder.
    labels: class names by label id (a list, or a label file) for PNG masks. data: the json already
    parsed. Follow with `raise_if_errors(report, where=f"data.{split}")`.
    """
    if task == "panoptic_segmentation":
        report = check_panoptic(annotations, images, masks, workers, decode, data=data)
    elif annotations is not None:
        report = check_dataset(annotations, images, workers, decode, task, multi_label if task == "classification" else None, data=data)
    elif task == "classification":
        report = check_image_folder(images, decode, workers)
    elif task == "semantic_segmentation" and masks is not None:
        from cvengine.data.masks import read_class_names

        if labels is None:
            raise RecipeError(f"data.labels is required with data.{split}.masks: the class names by label id, a list or a file")
        names = read_class_names(labels)
        labels_path = os.fspath(labels) if isinstance(labels, (str, os.PathLike)) else None
        report = check_mask_folder(images, masks, len(names), ignore_index, reduce_labels, workers, decode, labels_path)
    else:
        raise RecipeError(f"data.{split}.annotations is required for {task}")
    return report


def validate_or_raise(task: str, split: str, annotations, images, masks=None, labels=None, **options) -> Report:
    """What training calls per split before anything is written: `validate_for_training`, then
    `raise_if_errors(where="data.<split>")`. The caller logs `report.warnings_line(...)` once every
    split has passed, so that a refused run prints its one error line alone."""
    report = validate_for_training(task, split, annotations, images, masks, labels, **options)
    raise_if_errors(report, where=f"data.{split}")
    return report
