"""`python -m cvengine.data demo|check|stats|convert`: make the demo data set, validate a data set, describe
one, convert one from another annotation format to COCO.

    python -m cvengine.data demo data/demo --task detection --seed 0
    python -m cvengine.data check data/demo/train/annotations.json --images data/demo/train/images
    python -m cvengine.data stats data/demo/train/annotations.json --json
    python -m cvengine.data convert my_yolo_set data/mine --from yolo

`check` exits 1 when it finds errors (warnings alone: 0); a path that cannot be opened exits 2. It
prints each error (at most --max-per-kind of a kind) and each kind of warning once, with its count.
"""
from __future__ import annotations

import argparse
import json
import os

from cvengine.cli import run_cli
from cvengine.data.validate import DECODE_MODES
from cvengine.tasks import TASKS
from cvengine.errors import DataError


def _demo(args) -> int:
    from cvengine.data.demo import make_demo

    if os.path.isdir(args.out_dir) and any(os.scandir(args.out_dir)):
        if not args.overwrite:
            raise DataError(f"{args.out_dir} is not empty: choose an empty folder, or pass --overwrite to replace the demo's train/ and val/ in it")
        import shutil

        # Only the folders the demo writes: a smaller demo must not leave the larger one's images behind.
        for split in ("train", "val"):
            shutil.rmtree(os.path.join(args.out_dir, split), ignore_errors=True)
    result = make_demo(args.out_dir, task=args.task, seed=args.seed, num_train=args.num_train, num_val=args.num_val, canvas=(args.canvas, args.canvas), layout=args.layout, classes=args.classes)
    height, width = result["canvas"]
    print(f"demo {result['task']} data set (seed {result['seed']}, {width}x{height} images, {result['categories']} {'category' if result['categories'] == 1 else 'categories'}) in {result['out_dir']}")
    for split, info in result["splits"].items():
        print(f"  {split}: {info['num_images']} images, {info['num_annotations']} annotations")
        print(f"    annotations {info['annotations'] or '(none: class folders)'}")
        print(f"    images      {info['images']}")
        if info.get("masks"):
            print(f"    masks       {info['masks']}")
    return 0


def _check(args) -> int:
    from cvengine.data.validate import check

    images_dir = args.images
    if images_dir is None and not os.path.isdir(args.annotations) and args.decode != "none":
        images_dir = os.path.join(os.path.dirname(os.path.abspath(args.annotations)), "images")
        if not os.path.isdir(images_dir):
            raise DataError(f"images folder not found: {images_dir} (pass --images DIR, or --decode none to open no image)")
    report = check(
        args.annotations, images_dir, masks=args.masks, labels=args.labels, task=args.task, decode=args.decode, workers=args.workers,
        ignore_index=args.ignore_index, reduce_labels=args.reduce_labels, multi_label=True if args.multi_label else None,
    )
    for line in report.lines(max_per_kind=args.max_per_kind, every_warning=args.all_warnings):
        print(line)
    print(report.summary())
    return 0 if report.ok else 1


def _stats(args) -> int:
    from cvengine.data.stats import dataset_stats, render_stats

    stats = dataset_stats(args.annotations, masks_dir=args.masks)
    print(json.dumps(stats, indent=2) if args.json else render_stats(stats))
    return 0


def _convert(args) -> int:
    from cvengine.data.convert import convert

    written = convert(args.src, args.dst, args.source_format, images=args.images, bbox_format=args.bbox_format, overwrite=args.overwrite)
    for split, info in written.items():
        print(
            f"{split or 'all'}: {info['num_images']} images, {info['num_annotations']} annotations, {info['num_categories']} categories"
            f" -> {info['annotations_path']} (images in {info['images_dir']})"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cvengine.data", description="Demo data, validation and statistics for COCO data sets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,check,stats,convert}")

    demo = sub.add_parser("demo", help="write a small COCO data set built from scikit-learn's handwritten digits")
    demo.add_argument("out_dir", metavar="DIR")
    demo.add_argument("--task", default="detection", help="which annotations to write (default: detection)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--num-train", type=int, default=64, help="train images (default: 64)")
    demo.add_argument("--num-val", type=int, default=16, help="val images (default: 16)")
    demo.add_argument("--canvas", type=int, default=160, metavar="PIXELS", help="side of the square canvases (default: 160); digits are 24-64 px, at most the canvas")
    demo.add_argument("--layout", default="coco", help="coco (default), or imagefolder for classification: images/<class>/<file>")
    demo.add_argument("--classes", default="digits", help="digits (default: the ten digits), or ink for semantic_segmentation: one class 'digit' for every digit's ink")
    demo.add_argument("--overwrite", action="store_true", help="write into a non-empty DIR, replacing its train/ and val/ folders")
    demo.set_defaults(handler=_demo)

    check = sub.add_parser("check", help="validate a data set (COCO, COCO panoptic, ImageFolder, PNG masks) and read every image it lists")
    check.add_argument("annotations", metavar="ANNOTATIONS")
    check.add_argument("--images", metavar="DIR", help="images folder (default: 'images' beside ANNOTATIONS)")
    check.add_argument("--workers", type=int, default=None, help="threads reading images (default: cores, at most 8)")
    check.add_argument("--masks", metavar="DIR", help="COCO panoptic: folder of segment PNGs (default: ANNOTATIONS without .json)")
    check.add_argument(
        "--task", choices=TASKS, default=None,
        help="check with this task's rules (a segmentation per annotation; classification: no bbox needed); default: detected from the file",
    )
    check.add_argument(
        "--decode", choices=DECODE_MODES, default="full",
        help="full: decode every image (default); header: sizes and EXIF orientation only, as training does; none: open no image file",
    )
    check.add_argument("--multi-label", action="store_true", help="classification: images may have several classes, or none")
    # ANNOTATIONS may be a folder: an ImageFolder (images/<class>/…), or with --masks and --labels
    # the images of a semantic segmentation data set whose label PNGs lie in --masks.
    check.add_argument("--labels", metavar="FILE", help="semantic PNG masks: class names by label id (JSON list/object or one per line)")
    check.add_argument("--ignore-index", type=int, default=255, help="semantic PNG masks: the value of unlabelled pixels (default 255)")
    check.add_argument("--reduce-labels", action="store_true", help="semantic PNG masks: 0 is ignored and v means class v-1 (ADE20K)")
    check.add_argument(
        "--max-per-kind", type=int, default=50, metavar="N", help="print at most N error lines per kind of problem (0: all; default 50)"
    )
    check.add_argument("--all-warnings", action="store_true", help="print every warning (default: each kind once, with its count and first example)")
    check.set_defaults(handler=_check)

    stats = sub.add_parser("stats", help="class counts, box / segment and image size distributions of a COCO, COCO panoptic or ImageFolder data set")
    stats.add_argument("annotations", metavar="ANNOTATIONS", help="a COCO or COCO panoptic json, or an ImageFolder folder")
    stats.add_argument("--masks", metavar="DIR", help="COCO panoptic: folder of segment PNGs for pixel counts (default: ANNOTATIONS without .json, when present)")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(handler=_stats)

    from cvengine.data.convert import FORMATS

    convert = sub.add_parser("convert", help="convert YOLO, Pascal VOC, LabelMe, CVAT, Label Studio or Hugging Face datasets annotations to COCO json + images")
    convert.add_argument("src", metavar="SRC", help="the source folder or annotation file (hf-datasets: a save_to_disk folder or a hub id)")
    convert.add_argument("dst", metavar="DST", help="output folder: DST/<split>/annotations.json + images/ (DST/annotations.json when the source has no splits)")
    convert.add_argument("--from", dest="source_format", required=True, choices=FORMATS, help="the source's format")
    convert.add_argument("--images", metavar="DIR", help="cvat, labelstudio, labelme: the images folder (default: images/ beside the annotations)")
    convert.add_argument("--bbox-format", choices=("xywh", "xyxy"), default="xywh", help="hf-datasets: how objects.bbox is stored (default xywh, as in cppe-5)")
    convert.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    run_cli(main)
