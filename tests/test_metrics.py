"""COCO metrics equal pycocotools' own, from Python and from the CLI; the COCO index on hand-built files."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from cvengine.data.coco import CocoIndex  # noqa: E402
from cvengine.errors import DataError  # noqa: E402
from cvengine.metrics.coco import COCO_METRIC_KEYS, coco_from_dict, detections_to_array, evaluate_coco  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CATEGORY_IDS = [1, 5, 90]


def _polygon(x, y, w, h):
    # An octagon inscribed in the box: its mask differs from the box, so segm and bbox IoUs differ.
    dx, dy = w / 4, h / 4
    return [x + dx, y, x + w - dx, y, x + w, y + dy, x + w, y + h - dy,
            x + w - dx, y + h, x + dx, y + h, x, y + h - dy, x, y + dy]


def make_ground_truth(seed=0, num_images=14, empty_images=3):
    """COCO instances dict: category ids with gaps, crowd regions, and images without annotations."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        w, h = int(rng.integers(160, 400)), int(rng.integers(160, 400))
        image_id = 1000 + 7 * i  # not 0..N-1, not contiguous
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": w, "height": h})
        if i >= num_images - empty_images:
            continue
        for k in range(int(rng.integers(1, 7))):
            # Sizes span COCO's small (<32²), medium and large (>96²) area ranges.
            bw = float(rng.uniform(8, min(w, 200)))
            bh = float(rng.uniform(8, min(h, 200)))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            crowd = int(k == 0 and i % 4 == 1)
            poly = _polygon(x, y, bw, bh)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(rng.choice(CATEGORY_IDS)),
                "bbox": [x, y, bw, bh],
                "area": float(mask_utils.area(rle)),
                "iscrowd": crowd,
                "segmentation": [poly],
            })
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}


def make_predictions(gt, seed=1, per_image=8, segm=False):
    """Random results: jittered copies of ground-truth boxes (some with the wrong class) plus noise."""
    rng = np.random.default_rng(seed)
    by_image = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    results = []
    for im in gt["images"]:
        w, h = im["width"], im["height"]
        anns = by_image.get(im["id"], [])
        for k in range(per_image):
            if anns and k < 2 * len(anns):
                x, y, bw, bh = anns[k % len(anns)]["bbox"]
                s = rng.uniform(0.8, 1.2, size=2)
                x, y = x + rng.normal(0, 4), y + rng.normal(0, 4)
                bw, bh = bw * s[0], bh * s[1]
                cat = anns[k % len(anns)]["category_id"] if rng.random() < 0.8 else int(rng.choice(CATEGORY_IDS))
            else:
                bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                cat = int(rng.choice(CATEGORY_IDS))
            x, y = float(np.clip(x, 0, w - 2)), float(np.clip(y, 0, h - 2))
            bw, bh = float(min(bw, w - x)), float(min(bh, h - y))
            r = {"image_id": im["id"], "category_id": cat, "score": round(float(rng.random()), 6)}
            if segm:
                rle = mask_utils.merge(mask_utils.frPyObjects([_polygon(x, y, bw, bh)], h, w))
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:
                r["bbox"] = [x, y, bw, bh]
            results.append(r)
    return results


def pycocotools_stats(gt_path, pred_path, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(pred_path))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(COCO_METRIC_KEYS, ev.stats.tolist()))


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def run_metrics_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "cvengine.metrics", *map(str, args)],
                          capture_output=True, text=True, cwd=str(REPO), env=env, timeout=120)


def assert_same(actual, expected):
    assert list(actual) == list(COCO_METRIC_KEYS)
    for k in COCO_METRIC_KEYS:
        assert actual[k] == pytest.approx(expected[k], abs=1e-6), k


@pytest.fixture
def gt_files(tmp_path):
    gt = make_ground_truth()
    assert any(a["iscrowd"] for a in gt["annotations"])
    return gt, write_json(tmp_path / "gt.json", gt)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_equals_pycocotools(tmp_path, gt_files, iou_type):
    gt, gt_path = gt_files
    preds = make_predictions(gt, segm=iou_type == "segm")
    pred_path = write_json(tmp_path / "preds.json", preds)
    expected = pycocotools_stats(gt_path, pred_path, iou_type)
    # A meaningful case: some but not all detections match.
    assert 0.05 < expected["map"] < 0.95

    assert_same(evaluate_coco(gt_path, pred_path, iou_type=iou_type), expected)
    assert_same(evaluate_coco(gt, preds, iou_type=iou_type), expected)
    assert_same(evaluate_coco(coco_from_dict(gt), json.loads(pred_path.read_text()), iou_type=iou_type), expected)
    # The caller's data is not modified by evaluation.
    assert json.loads(gt_path.read_text()) == gt
    assert json.loads(pred_path.read_text()) == preds

    proc = run_metrics_cli("--annotations", gt_path, "--predictions", pred_path, "--iou-type", iou_type, "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1
    assert_same(json.loads(proc.stdout), expected)


def test_detection_array_equals_pycocotools(tmp_path, gt_files):
    gt, gt_path = gt_files
    preds = make_predictions(gt, seed=3)
    pred_path = write_json(tmp_path / "preds.json", preds)
    expected = pycocotools_stats(gt_path, pred_path, "bbox")

    # Per-image xyxy arrays, as a model's post-processing gives them.
    image_ids = [im["id"] for im in gt["images"]]
    per_image = {i: [p for p in preds if p["image_id"] == i] for i in image_ids}
    boxes = [np.array([[p["bbox"][0], p["bbox"][1], p["bbox"][0] + p["bbox"][2], p["bbox"][1] + p["bbox"][3]]
                       for p in per_image[i]]).reshape(-1, 4) for i in image_ids]
    scores = [np.array([p["score"] for p in per_image[i]]) for i in image_ids]
    cats = [np.array([p["category_id"] for p in per_image[i]], dtype=np.int64) for i in image_ids]
    arr = detections_to_array(image_ids, boxes, scores, cats)
    assert arr.shape == (len(preds), 7) and arr.dtype == np.float64
    np.testing.assert_allclose(arr[:, 1:5], np.concatenate([[p["bbox"] for p in per_image[i]] for i in image_ids if per_image[i]]), atol=1e-9)
    assert_same(evaluate_coco(gt_path, arr), expected)

    # Flat layout gives the same rows.
    flat = detections_to_array(arr[:, 0], np.concatenate(boxes), np.concatenate(scores), np.concatenate(cats))
    np.testing.assert_array_equal(flat, arr)
    # Fixed number of detections per image, (I, D, 4).
    d3 = detections_to_array([7, 9], np.array([[[1, 2, 4, 6]] * 3, [[0, 0, 1, 1]] * 3], float), np.ones((2, 3)), np.full((2, 3), 5))
    np.testing.assert_array_equal(d3[:, 0], [7, 7, 7, 9, 9, 9])
    np.testing.assert_array_equal(d3[0], [7, 1, 2, 3, 4, 1, 5])


def test_empty_results(gt_files):
    gt, gt_path = gt_files
    for results in ([], np.zeros((0, 7))):
        metrics = evaluate_coco(gt_path, results)
        assert metrics["map"] == 0.0 and metrics["mar_100"] == 0.0
        assert set(metrics.values()) <= {0.0, -1.0}
    assert evaluate_coco(gt, [], iou_type="segm")["map"] == 0.0


def test_unknown_ids_are_named(tmp_path, gt_files):
    gt, gt_path = gt_files
    preds = make_predictions(gt)
    bad_image = [dict(p) for p in preds]
    bad_image[5]["image_id"] = 424242
    with pytest.raises(DataError, match=r"result 5 has image_id 424242"):
        evaluate_coco(gt, bad_image)
    bad_cat = [dict(p) for p in preds]
    bad_cat[3]["category_id"] = 2
    with pytest.raises(DataError, match=r"result 3 has category_id 2\b"):
        evaluate_coco(gt, bad_cat)
    path = write_json(tmp_path / "bad.json", bad_cat)
    with pytest.raises(DataError, match=str(path)):
        evaluate_coco(gt_path, path)
    arr = detections_to_array([gt["images"][0]["id"]], [np.array([[0, 0, 5, 5.0]])], [np.array([0.5])], [np.array([77])])
    with pytest.raises(DataError, match=r"category_id 77"):
        evaluate_coco(gt, arr)
    missing = [{k: v for k, v in p.items() if k != "score"} for p in preds]
    with pytest.raises(DataError, match=r"result 0 has no 'score'"):
        evaluate_coco(gt, missing)
    with pytest.raises(DataError, match=r"no 'segmentation'"):
        evaluate_coco(gt, preds, iou_type="segm")


def test_cli_table(tmp_path, gt_files):
    gt, gt_path = gt_files
    pred_path = write_json(tmp_path / "preds.json", make_predictions(gt))
    proc = run_metrics_cli("--annotations", gt_path, "--predictions", pred_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(COCO_METRIC_KEYS)


@pytest.mark.parametrize("content", ['[{"image_id": 1, "bbox": [1, 2', "", "not json"])
def test_cli_malformed_predictions(tmp_path, gt_files, content):
    _, gt_path = gt_files
    bad = tmp_path / "broken_preds.json"
    bad.write_text(content)
    proc = run_metrics_cli("--annotations", gt_path, "--predictions", bad, "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]


def test_cli_bad_annotations(tmp_path):
    missing = tmp_path / "nope.json"
    preds = write_json(tmp_path / "p.json", [])
    for gt_path, needle in ((missing, "not found"), (write_json(tmp_path / "list.json", [1, 2]), "top level")):
        proc = run_metrics_cli("--annotations", gt_path, "--predictions", preds)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(gt_path) in lines[0] and needle in lines[0]


# ---- CocoIndex on hand-built files ----------------------------------------------------------------

def _index_json(**overrides):
    data = {
        "images": [
            {"id": 20, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 3, "file_name": "b.jpg", "width": 50, "height": 50},  # no annotations
            {"id": 11, "file_name": "c.jpg", "width": 60, "height": 40},
        ],
        "categories": [{"id": 90, "name": "ninety"}, {"id": 1, "name": "one"}, {"id": 5, "name": "five"}],
        "annotations": [
            {"id": 1, "image_id": 20, "category_id": 5, "bbox": [10, 10, 20, 20], "iscrowd": 0},
            {"id": 2, "image_id": 20, "category_id": 90, "bbox": [90, 70, 30, 30], "iscrowd": 0},  # partly outside
            {"id": 3, "image_id": 20, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},  # crowd
            {"id": 4, "image_id": 20, "category_id": 1, "bbox": [99.5, 10, 10, 10], "iscrowd": 0},  # 0.5 px once clipped
            {"id": 5, "image_id": 11, "category_id": 90, "bbox": [5, 5, 1, 30]},  # exactly 1 px wide
            {"id": 6, "image_id": 11, "category_id": 1, "bbox": [1, 2, 3, 4]},
        ],
    }
    data.update(overrides)
    return data


def test_coco_index_labels_crowd_clipping(tmp_path):
    path = write_json(tmp_path / "instances.json", _index_json())
    index = CocoIndex.load(path, tmp_path)
    # Category ids with gaps become contiguous labels ordered by id, and go back.
    np.testing.assert_array_equal(index.label_map.category_ids, [1, 5, 90])
    assert index.class_names == ["one", "five", "ninety"]
    for label, cid in enumerate(index.label_map.category_ids):
        assert index.label_map.label_of(cid) == label
    for cid in (1, 5, 90):
        assert index.label_map.category_id(index.label_map.label_of(cid)) == cid
    np.testing.assert_array_equal(index.label_map.category_ids_of([2, 0, 1]), [90, 1, 5])
    assert index.label_map.label_of(2) is None

    assert index.num_degenerate == 2  # annotations 4 and 5
    np.testing.assert_array_equal(index.image_ids, [20, 3, 11])
    boxes, labels = index.targets(0)
    np.testing.assert_allclose(boxes, [[10, 10, 30, 30], [90, 70, 100, 80]])
    np.testing.assert_array_equal(labels, [1, 2])
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    boxes, labels = index.targets(0, include_crowd=True)
    np.testing.assert_allclose(boxes, [[10, 10, 30, 30], [90, 70, 100, 80], [0, 0, 50, 50]])
    np.testing.assert_array_equal(labels, [1, 2, 0])

    boxes, labels = index.targets(1)
    assert boxes.shape == (0, 4) and labels.shape == (0,)
    boxes, labels = index.targets(1, include_crowd=True)
    assert boxes.shape == (0, 4)
    boxes, labels = index.targets(2)
    np.testing.assert_allclose(boxes, [[1, 2, 4, 6]])
    np.testing.assert_array_equal(labels, [0])
    assert len(index) == 3 and index.num_classes == 3


@pytest.mark.parametrize(
    "overrides, needles",
    [
        ({"annotations": [{"id": 77, "image_id": 20, "category_id": 3, "bbox": [1, 1, 5, 5]}]}, ["77", "category_id 3"]),
        ({"annotations": [{"id": 78, "image_id": 999, "category_id": 1, "bbox": [1, 1, 5, 5]}]}, ["78", "image_id 999"]),
        ({"images": [{"id": 4, "file_name": "a.jpg", "width": 9, "height": 9},
                     {"id": 4, "file_name": "b.jpg", "width": 9, "height": 9}], "annotations": []}, ["duplicate image id 4"]),
        ({"annotations": [{"id": 79, "image_id": 20, "category_id": 1, "bbox": [1, 1, 5]}]}, ["79"]),
    ],
)
def test_coco_index_errors_name_file_and_record(tmp_path, overrides, needles):
    path = write_json(tmp_path / "bad_instances.json", _index_json(**overrides))
    with pytest.raises(DataError) as err:
        CocoIndex.load(path, tmp_path)
    message = str(err.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_coco_index_malformed_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json"):
        CocoIndex.load(path, tmp_path)
