"""`python -m cvengine.metrics --annotations gt.json --predictions preds.json [--iou-type segm] [--json] [--per-class]`

COCO AP/AR of a COCO results file against a COCO instances file, computed by pycocotools.
"""
from __future__ import annotations

import argparse
import json

from cvengine.cli import run_cli
from cvengine.metrics.coco import COCO_METRIC_DESCRIPTIONS, COCO_METRIC_KEYS, IOU_TYPES, coco_evaluator, per_class_ap


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvengine.metrics", description=__doc__.strip().splitlines()[-1])
    parser.add_argument("--annotations", required=True, help="COCO instances JSON (ground truth)")
    parser.add_argument("--predictions", required=True, help="COCO results JSON: a list of {image_id, category_id, score, bbox | segmentation}")
    parser.add_argument("--iou-type", choices=IOU_TYPES, default="bbox", help="bbox (default) or segm (RLE segmentations)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the 12 metrics instead of a table")
    parser.add_argument(
        "--per-class", action="store_true",
        help="also AP and AP50 of each category with ground truth (JSON: a 'per_class' list of {category_id, name, ap, ap_50})",
    )
    args = parser.parse_args(argv)

    evaluator = coco_evaluator(args.annotations, args.predictions, iou_type=args.iou_type)
    metrics = {key: float(v) for key, v in zip(COCO_METRIC_KEYS, evaluator.stats)}
    classes = [{"category_id": cid, **row} for cid, row in per_class_ap(evaluator).items()] if args.per_class else []
    if args.json:
        print(json.dumps({**metrics, "per_class": classes} if args.per_class else metrics))
    else:
        width = max(map(len, COCO_METRIC_KEYS))
        for key in COCO_METRIC_KEYS:
            print(f"{key:<{width}}  {metrics[key]:7.4f}   {COCO_METRIC_DESCRIPTIONS[key]}")
        if classes:
            name_width = max(len(str(row["name"])) for row in classes)
            print(f"\n{'id':>5}  {'category':<{name_width}}  {'AP':>7}  {'AP50':>7}")
            for row in classes:
                print(f"{row['category_id']:>5}  {row['name']:<{name_width}}  {row['ap']:7.4f}  {row['ap_50']:7.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
