"""`python -m cvengine.data check` for the layouts without a COCO file: ImageFolder classification
(`images/<class>/<file>`) and image + PNG mask folders for semantic segmentation. Same report as
the COCO check (`cvengine.data.check.Report`): every problem, one line each, naming the file."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor


from cvengine.data.check import Report, _Collector, _image_shape
from cvengine.data.images import IMAGE_EXTENSIONS, image_folder_classes
from cvengine.errors import DataError


def _images_under(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.relpath(os.path.join(root, f), folder) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
    return found


def check_image_folder(images_dir: str, workers: int | None = None) -> Report:
    """Class folders present, each with images, every image decodable; files outside class folders
    are reported (they would be ignored)."""
    report = Report(annotations_path=images_dir, images_dir=images_dir)
    out = _Collector(report, images_dir)
    classes = image_folder_classes(images_dir)
    report.num_categories = len(classes)
    stray = [e for e in os.listdir(images_dir) if os.path.isfile(os.path.join(images_dir, e)) and e.lower().endswith(IMAGE_EXTENSIONS)]
    for name in sorted(stray):
        out.warning("image outside class folders", f"{name}: not in a class folder; it is not used")
    paths = []
    for name in classes:
        files = [f for f in _images_under(os.path.join(images_dir, name))]
        if not files:
            out.warning("empty class folder", f"class folder '{name}' has no images")
        paths.extend(os.path.join(images_dir, name, f) for f in files)
    report.num_images = len(paths)
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        shapes = list(pool.map(_image_shape, paths))
    for path, shape in zip(paths, shapes):
        if isinstance(shape, str):
            out.error("unreadable image", shape)
        else:
            report.num_images_decoded += 1
    return report


def check_mask_folder(images_dir: str, masks_dir: str, num_classes: int, ignore_index: int = 255, reduce_labels: bool = False, workers: int | None = None) -> Report:
    """Every image has a mask `<masks>/<image path without extension>.png` that decodes, is single
    channel, has the image's size and holds only label ids 0..K-1 (after reduce_labels) or the
    ignore value."""
    from cvengine.data.masks import read_label_png, remap_png_labels

    if not os.path.isdir(images_dir):
        raise DataError(f"images folder not found: {images_dir}")
    if not os.path.isdir(masks_dir):
        raise DataError(f"masks folder not found: {masks_dir}")
    report = Report(annotations_path=masks_dir, images_dir=images_dir)
    report.num_categories = num_classes
    out = _Collector(report, masks_dir)
    files = _images_under(images_dir)
    report.num_images = len(files)

    def one(file_name: str) -> list[tuple[str, str]]:
        image_path = os.path.join(images_dir, file_name)
        mask_path = os.path.join(masks_dir, os.path.splitext(file_name)[0] + ".png")
        problems = []
        shape = _image_shape(image_path)
        if isinstance(shape, str):
            problems.append(("unreadable image", shape))
        if not os.path.isfile(mask_path):
            return problems + [("missing mask", f"{os.path.basename(mask_path)}: no mask for image {image_path}")]
        try:
            values = read_label_png(mask_path)
            remap_png_labels(values, num_classes, ignore_index, reduce_labels, mask_path)
        except DataError as err:
            return problems + [("invalid mask", str(err))]
        if not isinstance(shape, str) and values.shape != shape:
            problems.append(("mask size mismatch", f"mask {mask_path} is {values.shape[1]}x{values.shape[0]} but image {image_path} is {shape[1]}x{shape[0]} (width x height)"))
        return problems

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, files))
    for problems in results:
        if not any(kind == "unreadable image" for kind, _ in problems):
            report.num_images_decoded += 1
        for kind, message in problems:
            out.error(kind, message)
    known = {os.path.splitext(f)[0] for f in files}
    for mask in _images_under(masks_dir):
        if os.path.splitext(mask)[0] not in known:
            out.warning("mask without image", f"{mask}: no image with this name in {images_dir}")
    report.num_annotations = len(files) - sum(1 for p in results if any(k == "missing mask" for k, _ in p))
    return report
