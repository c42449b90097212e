"""Other annotation formats -> COCO instances json + images, the layout every cvengine task reads.

    python -m cvengine.data convert SRC DST --from yolo|voc|labelme|cvat|labelstudio|hf-datasets

Readers, and who wrote them:
  yolo, voc, labelme   supervision's DetectionDataset readers (boxes, polygons as masks)
  cvat                 CVAT "COCO 1.0" exports are COCO already (copied with their images);
                       CVAT "for images 1.1" XML is read here (no maintained light-weight reader exists)
  labelstudio          Label Studio's JSON export, read here (rectangles and polygons in percent)
  hf-datasets          a Hugging Face `datasets` folder (`save_to_disk`) or hub id with the
                       `image` / `objects{bbox, category}` schema (cppe-5), read here

Output: DST/<split>/annotations.json + DST/<split>/images/ for sources with splits (YOLO data.yaml
splits, VOC ImageSets/Main lists, DatasetDict splits), DST/annotations.json + DST/images/ otherwise.
Image files are copied byte for byte (or written from the dataset's stored bytes), never re-encoded.
Category ids are 1..K in the source's class order.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Optional

import attrs
import numpy as np

from cvengine.data.images import IMAGE_EXTENSIONS
from cvengine.errors import DataError

FORMATS = ("yolo", "voc", "labelme", "cvat", "labelstudio", "hf-datasets")
# Boxes arrive as float32 (supervision) or as percentages (Label Studio); rounding to 1e-4 pixel
# removes the representation noise (47.00000381) without moving any box measurably.
_DECIMALS = 4


@attrs.define
class ConvertedImage:
    """One image of a converted split: where its bytes come from and its annotations."""

    file_name: str  # relative path under the split's images/ folder
    width: int
    height: int
    boxes_xyxy_abs: np.ndarray  # (N, 4) float, absolute pixels
    labels: np.ndarray  # (N,) int, 0..K-1 index into the split's class names
    source_path: Optional[str] = None  # file to copy, or
    source_bytes: Optional[bytes] = None  # encoded image bytes to write
    # Per annotation: COCO polygons [[x1, y1, x2, y2, ...], ...], an RLE dict, or None (box only).
    segmentations: Optional[list] = None
    iscrowd: Optional[np.ndarray] = None  # (N,) 0/1


@attrs.define
class ConvertedSplit:
    classes: list
    images: list  # of ConvertedImage


def write_coco(split: ConvertedSplit, out_dir: Path) -> dict:
    """Write out_dir/annotations.json and out_dir/images/; returns counts for the summary line."""
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": str(name), "supercategory": ""} for k, name in enumerate(split.classes)]
    coco_images, coco_annotations = [], []
    seen = set()
    for image_id, item in enumerate(split.images, start=1):
        if item.file_name in seen:
            raise DataError(f"two images would be written as {images_dir / item.file_name}: rename one in the source")
        seen.add(item.file_name)
        target = images_dir / item.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.source_bytes is not None:
            target.write_bytes(item.source_bytes)
        else:
            shutil.copyfile(item.source_path, target)
        coco_images.append({"id": image_id, "file_name": item.file_name, "width": int(item.width), "height": int(item.height)})
        boxes = np.asarray(item.boxes_xyxy_abs, dtype=np.float64).reshape(-1, 4)
        for k, (box, label) in enumerate(zip(boxes, np.asarray(item.labels).reshape(-1))):
            x1, y1, x2, y2 = (round(float(v), _DECIMALS) for v in box)
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
            w, h = round(x2 - x1, _DECIMALS), round(y2 - y1, _DECIMALS)
            record = {
                "id": len(coco_annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                "bbox": [x1, y1, w, h], "area": round(w * h, _DECIMALS), "iscrowd": int(item.iscrowd[k]) if item.iscrowd is not None else 0,
            }
            segmentation = item.segmentations[k] if item.segmentations is not None else None
            if segmentation:
                record["segmentation"] = segmentation
                record["area"] = _segmentation_area(segmentation, int(item.height), int(item.width))
            coco_annotations.append(record)
    path = out_dir / "annotations.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"images": coco_images, "annotations": coco_annotations, "categories": categories}))
    os.replace(tmp, path)
    return {"annotations_path": str(path), "images_dir": str(images_dir), "num_images": len(coco_images), "num_annotations": len(coco_annotations), "num_categories": len(categories)}


def _segmentation_area(segmentation, height: int, width: int) -> float:
    from pycocotools import mask as mask_utils

    rles = mask_utils.frPyObjects(segmentation, height, width)
    rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
    return float(mask_utils.area(rle))


# --------------------------------------------------------------------------- supervision readers


def _from_supervision(dataset, images_root: str) -> ConvertedSplit:
    """A supervision DetectionDataset -> ConvertedSplit; masks become COCO polygons (or RLE when a mask
    has holes or several parts, as supervision's own COCO writer decides)."""
    from supervision.dataset.formats.coco import detections_to_coco_annotations

    images = []
    for path in dataset.image_paths:
        detections = dataset.annotations[path]
        height, width = _header_size(path)
        segmentations, iscrowd = None, None
        if detections.mask is not None and len(detections):
            coco, _ = detections_to_coco_annotations(detections, image_id=0, annotation_id=0, approximation_percentage=0.0)
            segmentations = [a["segmentation"] or None for a in coco]
            iscrowd = np.array([a["iscrowd"] for a in coco])
        images.append(ConvertedImage(
            file_name=os.path.relpath(path, images_root).replace(os.sep, "/"), width=width, height=height,
            boxes_xyxy_abs=np.asarray(detections.xyxy, dtype=np.float64), labels=np.asarray(detections.class_id, dtype=np.int64),
            source_path=path, segmentations=segmentations, iscrowd=iscrowd,
        ))
    return ConvertedSplit(classes=list(dataset.classes), images=images)


def _header_size(path: str) -> tuple[int, int]:
    from cvengine.data.coco import _image_header_size

    return _image_header_size(path, path, 0)


def _supervision_error(src, err: Exception) -> DataError:
    return DataError(f"{src}: {err}")


def read_yolo(src: Path) -> dict[Optional[str], ConvertedSplit]:
    """YOLO txt labels (`class cx cy w h`, normalised; or polygons) with a data.yaml naming the classes.

    Splits come from data.yaml's train/val/test entries (folders of images, labels in the sibling
    `labels` folder, as Ultralytics and Roboflow lay them out); without them, SRC/images + SRC/labels."""
    import supervision as sv
    import yaml

    data_yaml = src / "data.yaml" if src.is_dir() else src
    root = data_yaml.parent
    if not data_yaml.is_file():
        raise DataError(f"{data_yaml}: not found; a YOLO data set needs data.yaml with the class names (names: [...])")
    try:
        spec = yaml.safe_load(data_yaml.read_text()) or {}
    except yaml.YAMLError as err:
        raise DataError(f"{data_yaml}: not valid YAML ({err})") from None
    base = root / spec["path"] if isinstance(spec.get("path"), str) else root
    splits: dict[Optional[str], tuple[Path, Path]] = {}
    for key, name in (("train", "train"), ("val", "val"), ("valid", "val"), ("test", "test")):
        entry = spec.get(key)
        if not isinstance(entry, str):
            continue
        images_dir = _resolve_yolo_dir(base, root, entry)
        if images_dir is not None:
            splits[name] = (images_dir, _labels_dir(images_dir))
    if not splits:
        if not (root / "images").is_dir():
            raise DataError(f"{data_yaml}: no train/val/test folder found and no images/ folder beside it")
        splits[None] = (root / "images", root / "labels")
    out = {}
    for name, (images_dir, labels_dir) in splits.items():
        try:
            dataset = sv.DetectionDataset.from_yolo(str(images_dir), str(labels_dir), str(data_yaml))
        except ValueError as err:
            raise _supervision_error(labels_dir, err) from None
        out[name] = _from_supervision(dataset, str(images_dir))
    return out


def _resolve_yolo_dir(base: Path, root: Path, entry: str) -> Optional[Path]:
    # Roboflow writes "../train/images" relative to data.yaml's folder's child; Ultralytics relative to `path`.
    for candidate in (base / entry, root / entry, root / entry.lstrip("./")):
        if candidate.is_dir():
            return candidate
    return None


def _labels_dir(images_dir: Path) -> Path:
    parts = list(images_dir.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = "labels"
        return Path(*parts)
    return images_dir.parent / "labels"


def read_voc(src: Path) -> dict[Optional[str], ConvertedSplit]:
    """Pascal VOC xml. VOCdevkit layout (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt) or a
    folder holding images and their .xml files side by side. Boxes are VOC's 1-based inclusive pixel
    indices, which supervision maps to COCO's continuous coordinates (xmin - 1, ymin - 1, xmax, ymax)."""
    import supervision as sv

    if (src / "Annotations").is_dir() and (src / "JPEGImages").is_dir():
        images_dir, xml_dir = src / "JPEGImages", src / "Annotations"
    else:
        images_dir = xml_dir = src
    if not any(xml_dir.glob("*.xml")):
        raise DataError(f"{xml_dir}: no .xml annotation files (expected Pascal VOC: Annotations/ + JPEGImages/, or images with .xml beside them)")
    try:
        dataset = sv.DetectionDataset.from_pascal_voc(str(images_dir), str(xml_dir))
    except ValueError as err:
        raise _supervision_error(xml_dir, err) from None
    converted = _from_supervision(dataset, str(images_dir))
    # Stable class order: alphabetical (supervision orders classes by first appearance).
    order = sorted(range(len(converted.classes)), key=lambda k: converted.classes[k])
    remap = np.empty(len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))
    converted.classes = [converted.classes[k] for k in order]
    for item in converted.images:
        item.labels = remap[item.labels] if len(item.labels) else item.labels
    lists = sorted((src / "ImageSets" / "Main").glob("*.txt")) if (src / "ImageSets" / "Main").is_dir() else []
    # Only the plain split lists (train.txt, val.txt, ...), not the per-class ones (cat_train.txt).
    lists = [p for p in lists if "_" not in p.stem]
    if not lists:
        return {None: converted}
    by_stem = {Path(item.file_name).stem: item for item in converted.images}
    out = {}
    for list_file in lists:
        stems = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        missing = [s for s in stems if s not in by_stem]
        if missing:
            raise DataError(f"{list_file}: {len(missing)} listed images have no file in {images_dir} (first: {missing[0]})")
        out[list_file.stem] = ConvertedSplit(classes=converted.classes, images=[by_stem[s] for s in stems])
    return out


def read_labelme(src: Path, images: Optional[Path] = None) -> dict[Optional[str], ConvertedSplit]:
    """LabelMe: one .json per image (rectangles and polygons), images beside them or in --images."""
    import supervision as sv

    images_dir = images or src
    try:
        dataset = sv.DetectionDataset.from_labelme(str(images_dir), str(src))
    except ValueError as err:
        raise _supervision_error(src, err) from None
    return {None: _from_supervision(dataset, str(images_dir))}


# --------------------------------------------------------------------------- hand-written readers


def _images_folder(src: Path, images: Optional[Path], annotation_file: Path) -> Path:
    for candidate in (images, src / "images" if src.is_dir() else None, annotation_file.parent / "images", annotation_file.parent.parent / "images"):
        if candidate is not None and candidate.is_dir():
            return candidate
    raise DataError(f"{annotation_file}: no images folder found beside it; pass --images DIR")


def _find_one(src: Path, patterns: Iterable[str], what: str) -> Path:
    if src.is_file():
        return src
    for pattern in patterns:
        found = sorted(src.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DataError(f"{src}: several {what} files ({', '.join(p.name for p in found[:4])}); pass one of them as SRC")
    raise DataError(f"{src}: no {what} file found")


def read_cvat(src: Path, images: Optional[Path] = None) -> dict[Optional[str], ConvertedSplit]:
    """CVAT exports. "COCO 1.0" (annotations/instances_<subset>.json) is COCO: read as such. "CVAT for
    images 1.1" (annotations.xml): <image name width height> holding <box xtl ytl xbr ybr label> (pixel
    corners, continuous: COCO's convention) and <polygon points="x,y;x,y;..." label>."""
    path = _find_one(src, ("annotations.xml", "*.xml", "annotations/instances_*.json", "*.json"), "CVAT annotations (.xml or COCO .json)")
    images_dir = _images_folder(src, images, path)
    if path.suffix.lower() == ".json":
        return {None: _from_coco_json(path, images_dir)}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path}: not valid XML ({err})") from None
    classes = [el.text for el in root.iterfind("./meta//labels/label/name") if el.text]
    items = []
    for image in root.iter("image"):
        name = image.get("name")
        if not name:
            raise DataError(f"{path}: an <image> element has no name attribute")
        file = _existing_image(images_dir, name, path)
        boxes, labels, segmentations = [], [], []
        for shape in image:
            label = shape.get("label")
            if shape.tag not in ("box", "polygon") or label is None:
                continue
            if label not in classes:
                classes.append(label)
            if shape.tag == "box":
                boxes.append([float(shape.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")])
                segmentations.append(None)
            else:
                points = np.array([[float(v) for v in pair.split(",")] for pair in shape.get("points", "").split(";") if pair], dtype=np.float64)
                if len(points) < 3:
                    raise DataError(f"{path}: image {name}: a polygon of {len(points)} points")
                boxes.append([*points.min(0), *points.max(0)])
                segmentations.append([[round(float(v), _DECIMALS) for v in points.reshape(-1)]])
            labels.append(classes.index(label))
        width, height = int(image.get("width", 0)), int(image.get("height", 0))
        if width <= 0 or height <= 0:
            height, width = _header_size(str(file))
        items.append(ConvertedImage(
            file_name=name, width=width, height=height, boxes_xyxy_abs=np.array(boxes, dtype=np.float64).reshape(-1, 4),
            labels=np.array(labels, dtype=np.int64), source_path=str(file), segmentations=segmentations,
        ))
    return {None: ConvertedSplit(classes=classes, images=items)}


def _existing_image(images_dir: Path, name: str, where: Path) -> Path:
    for candidate in (images_dir / name, images_dir / Path(name).name):
        if candidate.is_file():
            return candidate
    raise DataError(f"{where}: image {name} not found in {images_dir}")


def _from_coco_json(path: Path, images_dir: Path) -> ConvertedSplit:
    """A COCO instances file (such as CVAT's "COCO 1.0" export) as a ConvertedSplit: categories keep
    their order by id, boxes and segmentations pass through unchanged."""
    from cvengine.data.coco import read_json

    data = read_json(path)
    try:
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        label_of = {int(c["id"]): k for k, c in enumerate(categories)}
        per_image: dict[int, list] = {}
        for a in data.get("annotations", []):
            per_image.setdefault(int(a["image_id"]), []).append(a)
        items = []
        for im in data["images"]:
            anns = per_image.get(int(im["id"]), [])
            file = _existing_image(images_dir, im["file_name"], path)
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            height, width = (int(im["height"]), int(im["width"])) if im.get("width") and im.get("height") else _header_size(str(file))
            items.append(ConvertedImage(
                file_name=im["file_name"], width=width, height=height, boxes_xyxy_abs=boxes,
                labels=np.array([label_of[int(a["category_id"])] for a in anns], dtype=np.int64), source_path=str(file),
                segmentations=[a.get("segmentation") or None for a in anns], iscrowd=np.array([int(a.get("iscrowd", 0)) for a in anns]),
            ))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path}: not a COCO instances file ({type(err).__name__}: {err}); run python -m cvengine.data check on it") from None
    return ConvertedSplit(classes=[c["name"] for c in categories], images=items)


def read_labelstudio(src: Path, images: Optional[Path] = None) -> dict[Optional[str], ConvertedSplit]:
    """Label Studio's JSON export: a list of tasks, each `data.image` (a URL or path: its file name is
    looked up in the images folder) and `annotations[].result[]` of `rectanglelabels` / `polygonlabels`
    whose coordinates are percentages of `original_width` / `original_height`. The first annotation of
    a task is used (later ones are other annotators' versions); rotated rectangles are refused."""
    path = _find_one(src, ("*.json",), "Label Studio JSON export")
    images_dir = _images_folder(src, images, path)
    from cvengine.data.coco import read_json

    tasks = read_json(path)
    if not isinstance(tasks, list):
        raise DataError(f"{path}: a Label Studio JSON export is a list of tasks (the JSON-MIN and COCO exports are other formats)")
    classes, items = [], []
    for task in tasks:
        try:
            url = str(task["data"]["image"])
        except (KeyError, TypeError):
            raise DataError(f"{path}: task {task.get('id') if isinstance(task, dict) else task!r} has no data.image") from None
        name = url.split("?")[0].rstrip("/").split("/")[-1]
        file = _existing_image(images_dir, name, path)
        height, width = _header_size(str(file))
        boxes, labels, segmentations = [], [], []
        results = (task.get("annotations") or [{}])[0].get("result", [])
        for result in results:
            kind, value = result.get("type"), result.get("value", {})
            names = value.get(kind, []) if kind in ("rectanglelabels", "polygonlabels") else []
            if not names:
                continue
            sx, sy = width / 100.0, height / 100.0
            if kind == "rectanglelabels":
                if abs(float(value.get("rotation", 0) or 0)) > 1e-6:
                    raise DataError(f"{path}: task {task.get('id')}: a rotated rectangle ({value['rotation']} degrees) has no COCO box")
                x, y = float(value["x"]) * sx, float(value["y"]) * sy
                boxes.append([x, y, x + float(value["width"]) * sx, y + float(value["height"]) * sy])
                segmentations.append(None)
            else:
                points = np.array(value["points"], dtype=np.float64) * [sx, sy]
                boxes.append([*points.min(0), *points.max(0)])
                segmentations.append([[round(float(v), _DECIMALS) for v in points.reshape(-1)]])
            if names[0] not in classes:
                classes.append(names[0])
            labels.append(classes.index(names[0]))
        items.append(ConvertedImage(
            file_name=name, width=width, height=height, boxes_xyxy_abs=np.array(boxes, dtype=np.float64).reshape(-1, 4),
            labels=np.array(labels, dtype=np.int64), source_path=str(file), segmentations=segmentations,
        ))
    return {None: ConvertedSplit(classes=classes, images=items)}


# --------------------------------------------------------------------------- Hugging Face datasets


def load_hf_dataset(source: str):
    """A `datasets` Dataset or DatasetDict from a save_to_disk folder or a hub id."""
    try:
        import datasets
    except ImportError:
        raise DataError("reading Hugging Face datasets needs the datasets package: pip install 'cvengine[hf]'") from None
    if os.path.isdir(source):
        try:
            return datasets.load_from_disk(source)
        except FileNotFoundError as err:
            raise DataError(f"{source}: not a Hugging Face datasets folder written by save_to_disk ({err})") from None
    if os.path.exists(source) or source.startswith((".", "/")):
        raise DataError(f"{source}: no such folder")
    return datasets.load_dataset(source)


def _hf_category_names(features) -> Optional[list]:
    objects = features["objects"]
    inner = objects if isinstance(objects, dict) else getattr(objects, "feature", None)
    category = inner.get("category") if isinstance(inner, dict) else None
    category = getattr(category, "feature", category)
    return list(category.names) if hasattr(category, "names") else None


def hf_to_split(dataset, bbox_format: str = "xywh", where: str = "dataset", fix: str = "pass --bbox-format {other}") -> ConvertedSplit:
    """A `datasets.Dataset` with `image` and `objects{bbox, category}` columns -> ConvertedSplit.

    `bbox` is COCO [x, y, w, h] in absolute pixels in cppe-5 and most detection sets on the hub
    (`bbox_format="xywh"`); some sets store [x1, y1, x2, y2] (`"xyxy"`). Image bytes are written as
    stored (no re-encode)."""
    import datasets

    if bbox_format not in ("xywh", "xyxy"):
        raise DataError(f"bbox format must be xywh or xyxy, not {bbox_format!r}")
    for column in ("image", "objects"):
        if column not in dataset.column_names:
            raise DataError(f"{where}: no '{column}' column (columns: {', '.join(dataset.column_names)}); expected image and objects{{bbox, category}}")
    names = _hf_category_names(dataset.features)
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    items, max_label = [], -1
    for row_index, row in enumerate(raw):
        objects = row["objects"]
        if isinstance(objects, list):  # a list of per-object dicts instead of a dict of lists
            objects = {"bbox": [o["bbox"] for o in objects], "category": [o["category"] for o in objects]}
        boxes = np.array(objects["bbox"], dtype=np.float64).reshape(-1, 4)
        if bbox_format == "xywh":
            boxes[:, 2:] += boxes[:, :2]
        labels = np.array(objects["category"], dtype=np.int64).reshape(-1)
        image = row["image"]
        data = image.get("bytes")
        if data is None and image.get("path"):
            data = Path(image["path"]).read_bytes()
        height, width = _bytes_size(data, where, row_index)
        suffix = Path(image.get("path") or "").suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            suffix = _bytes_suffix(data)
        image_id = row.get("image_id", row_index)
        bad = (boxes[:, 2] > width + 1) | (boxes[:, 3] > height + 1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bad.any():
            other = "xyxy" if bbox_format == "xywh" else "xywh"
            raise DataError(
                f"{where}: row {row_index}: box {objects['bbox'][int(np.flatnonzero(bad)[0])]} read as {bbox_format} leaves the"
                f" {width}x{height} image; if the boxes are [{', '.join(other)}], {fix.format(other=other)}"
            )
        max_label = max(max_label, int(labels.max()) if len(labels) else -1)
        items.append(ConvertedImage(
            file_name=f"{int(image_id):08d}{suffix}" if isinstance(image_id, (int, np.integer)) else f"{image_id}{suffix}",
            width=width, height=height, boxes_xyxy_abs=boxes, labels=labels, source_bytes=data,
        ))
    if names is None:
        names = [str(k) for k in range(max_label + 1)]
    return ConvertedSplit(classes=names, images=items)


def _bytes_size(data: bytes, where: str, row_index: int) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            w, h = image.size
            if image.getexif().get(0x0112) in (5, 6, 7, 8):
                w, h = h, w
            return h, w
    except (UnidentifiedImageError, OSError, TypeError) as err:
        raise DataError(f"{where}: row {row_index}: the image cannot be read ({err})") from None


def _bytes_suffix(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}.get(image.format, ".png")


def read_hf(source: str, bbox_format: str = "xywh") -> dict[Optional[str], ConvertedSplit]:
    import datasets

    loaded = load_hf_dataset(source)
    if isinstance(loaded, datasets.DatasetDict):
        # Hub split names: "validation" is what every cvengine recipe calls "val".
        return {("val" if name == "validation" else name): hf_to_split(ds, bbox_format, f"{source} [{name}]") for name, ds in loaded.items()}
    return {None: hf_to_split(loaded, bbox_format, source)}


def is_hf_dataset_folder(path: str) -> bool:
    """A folder written by `Dataset.save_to_disk` (state.json) or `DatasetDict.save_to_disk`."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, marker)) for marker in ("state.json", "dataset_dict.json"))


def cache_root() -> Path:
    return Path(os.environ.get("CVENGINE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cvengine")


def hf_split_as_coco(folder: str, split: str) -> tuple[str, str]:
    """A recipe's `data.<split>.images` naming a Hugging Face datasets folder -> (annotations.json,
    images folder) for the ordinary COCO loader.

    The loader, evaluation and reports read image files and a COCO json, so the split is written once,
    keyed by the dataset's fingerprint, under the cache folder ($CVENGINE_CACHE, else
    ~/.cache/cvengine): image bytes as stored, boxes as COCO xywh. A changed dataset has a new
    fingerprint and is converted again. For a DatasetDict the recipe's split name picks the split
    ("val" also finds "validation")."""
    import datasets

    loaded = load_hf_dataset(folder)
    where = f"{folder}"
    if isinstance(loaded, datasets.DatasetDict):
        names = [split, *(["validation"] if split == "val" else [])]
        name = next((n for n in names if n in loaded), None)
        if name is None:
            raise DataError(f"{folder}: no '{split}' split in this Hugging Face dataset (splits: {', '.join(loaded)}); point data.{split}.images at one split's folder")
        loaded, where = loaded[name], f"{folder} [{name}]"
    target = cache_root() / "hf-datasets" / loaded._fingerprint
    annotations = target / "annotations.json"
    if not annotations.is_file():
        fix = f"convert the dataset with python -m cvengine.data convert {folder} DST --from hf-datasets --bbox-format {{other}} and point the recipe at DST"
        converted = hf_to_split(loaded, "xywh", where, fix)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        write_coco(converted, partial)
        try:
            os.replace(partial, target)
        except OSError:  # another process finished the same conversion first
            shutil.rmtree(partial, ignore_errors=True)
    return str(annotations), str(target / "images")


# --------------------------------------------------------------------------- entry point


def convert(src: str, dst: str, fmt: str, *, images: Optional[str] = None, bbox_format: str = "xywh", overwrite: bool = False) -> dict:
    """Convert SRC (format `fmt`) into COCO under DST; returns {split or "": counts}."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(dst)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} is not empty: choose an empty folder, or pass --overwrite to replace what the conversion writes there")
    source = Path(src)
    if fmt != "hf-datasets" and not source.exists():
        raise DataError(f"{src}: no such file or folder")
    images_dir = Path(images) if images else None
    if images_dir is not None and not images_dir.is_dir():
        raise DataError(f"--images {images}: no such folder")
    if fmt == "yolo":
        splits = read_yolo(source)
    elif fmt == "voc":
        splits = read_voc(source)
    elif fmt == "labelme":
        splits = read_labelme(source, images_dir)
    elif fmt == "cvat":
        splits = read_cvat(source, images_dir)
    elif fmt == "labelstudio":
        splits = read_labelstudio(source, images_dir)
    else:
        splits = read_hf(src, bbox_format)
    return {name or "": write_coco(split, out / name if name else out) for name, split in splits.items()}
