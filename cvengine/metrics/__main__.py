"""`python -m cvengine.metrics --annotations gt.json --predictions preds.json [--iou-type segm] [--json]`

COCO AP/AR of a COCO results file against a COCO instances file, computed by pycocotools.
"""
from __future__ import annotations

import argparse
import json

from cvengine.cli import run_cli
from cvengine.metrics.coco import COCO_METRIC_DESCRIPTIONS, COCO_METRIC_KEYS, IOU_TYPES, evaluate_coco


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvengine.metrics", description=__doc__.strip().splitlines()[-1])
    parser.add_argument("--annotations", required=True, help="COCO instances JSON (ground truth)")
    parser.add_argument("--predictions", required=True, help="COCO results JSON: a list of {image_id, category_id, score, bbox | segmentation}")
    parser.add_argument("--iou-type", choices=IOU_TYPES, default="bbox", help="bbox (default) or segm (RLE segmentations)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the 12 metrics instead of a table")
    args = parser.parse_args(argv)

    metrics = evaluate_coco(args.annotations, args.predictions, iou_type=args.iou_type)
    if args.json:
        print(json.dumps(metrics))
    else:
        width = max(map(len, COCO_METRIC_KEYS))
        for key in COCO_METRIC_KEYS:
            print(f"{key:<{width}}  {metrics[key]:7.4f}   {COCO_METRIC_DESCRIPTIONS[key]}")
    return 0


if __name__ == "__main__":
    run_cli(main)
