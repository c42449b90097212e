"""Per-class AP (`cvengine.metrics --per-class`) on real files: COCO val2014 ground truth for 100 images
and cocoapi's official fake bbox results (`../shared/external-data`), against pycocotools run one
category at a time (`params.catIds = [id]`: its `stats[0]` and `stats[1]` are that class's AP and AP50)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_module

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "external-data"
GT = EXTERNAL / "faster_coco_eval" / "tests" / "dataset" / "cocoapi" / "instances_val2014_100.json"
RESULTS = EXTERNAL / "cocoapi" / "results" / "instances_val2014_fakebbox100_results.json"

pytestmark = pytest.mark.skipif(not GT.exists(), reason="../shared/external-data is not beside this checkout")


def _one_category(gt, dt, category_id: int) -> tuple[float, float]:
    from pycocotools.cocoeval import COCOeval

    evaluator = COCOeval(gt, dt, iouType="bbox")
    evaluator.params.catIds = [category_id]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


def test_per_class_ap_equals_single_category_pycocotools():
    from pycocotools.coco import COCO

    result = run_module("cvengine.metrics", "--annotations", GT, "--predictions", RESULTS, "--json", "--per-class")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    rows = {row["category_id"]: row for row in out["per_class"]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(GT))
        dt = gt.loadRes(str(RESULTS))
    with_gt = sorted({a["category_id"] for a in gt.dataset["annotations"]})
    # Exactly the categories that have ground truth, each named as in the file.
    assert sorted(rows) == with_gt
    assert all(rows[c]["name"] == gt.cats[c]["name"] for c in with_gt)
    for category_id in with_gt[::4]:
        ap, ap_50 = _one_category(gt, dt, category_id)
        assert rows[category_id]["ap"] == pytest.approx(ap, abs=1e-12), gt.cats[category_id]["name"]
        assert rows[category_id]["ap_50"] == pytest.approx(ap_50, abs=1e-12), gt.cats[category_id]["name"]
    # map is the mean of the per-class APs (pycocotools' own definition).
    assert np.mean([r["ap"] for r in rows.values()]) == pytest.approx(out["map"], abs=1e-12)

    table = run_module("cvengine.metrics", "--annotations", GT, "--predictions", RESULTS, "--per-class")
    assert table.returncode == 0 and f"{gt.cats[with_gt[0]]['name']}" in table.stdout
