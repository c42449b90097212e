"""Metrics against numbers their authors published, on the real files (`../shared/external-data`):
COCO val2014 ground truth for 100 images with the official fake bbox and segm results of cocoapi,
whose printed AP/AR (`val2014_fake_eval_res.txt`) are the reference. Skipped where the folder is
absent (a user's clone)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_module

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "external-data"
GT = EXTERNAL / "faster_coco_eval" / "tests" / "dataset" / "cocoapi" / "instances_val2014_100.json"
RESULTS = EXTERNAL / "cocoapi" / "results"

pytestmark = pytest.mark.skipif(not GT.exists(), reason="../shared/external-data is not beside this checkout")

KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


def published(iou_type: str) -> dict[str, float]:
    """The 12 numbers cocoapi printed for its fake results of `iou_type` (3 decimals)."""
    text = (RESULTS / "val2014_fake_eval_res.txt").read_text()
    block = text.split(f"type={iou_type}")[1].split("type=")[0]
    values = [float(v) for v in re.findall(r"\] = ([0-9.]+)", block)]
    return dict(zip(KEYS, values))


def metrics_cli(predictions: Path, iou_type: str) -> dict[str, float]:
    done = run_module("cvengine.metrics", "--annotations", GT, "--predictions", predictions, "--iou-type", iou_type, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("iou_type, results", [("bbox", "instances_val2014_fakebbox100_results.json"), ("segm", "instances_val2014_fakesegm100_results.json")])
def test_cli_gives_the_published_numbers(iou_type, results):
    got = metrics_cli(RESULTS / results, iou_type)
    for key, value in published(iou_type).items():
        assert got[key] == pytest.approx(value, abs=5e-4), key


def test_segm_results_carrying_boxes_still_give_the_published_numbers(tmp_path):
    """cvengine's instance predictions carry each mask's `bbox` beside its RLE. pycocotools would then
    size the detections by box area (published map_small 0.387 becomes ~0.41); segm scoring uses the
    mask alone."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(GT))
    rows = json.loads((RESULTS / "instances_val2014_fakesegm100_results.json").read_text())
    for r in rows:
        # Fake results give polygons; the writer's form is RLE plus the RLE's box.
        image = gt.imgs[r["image_id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(r["segmentation"], image["height"], image["width"])) if isinstance(r["segmentation"], list) else r["segmentation"]
        r["bbox"] = mask_utils.toBbox(rle).tolist()
        r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]}
    path = tmp_path / "with_boxes.json"
    path.write_text(json.dumps(rows))

    got = metrics_cli(path, "segm")
    expected = published("segm")
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], abs=5e-4), key

    # What plain pycocotools makes of the same file: the box area decides the size buckets.
    evaluator = COCOeval(gt, gt.loadRes(str(path)), iouType="segm")
    evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    assert abs(evaluator.stats[3] - expected["map_small"]) > 0.01
