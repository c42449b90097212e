"""Instance and panoptic segmentation: every registered family (forward, loss, backward, post-process,
metrics), metric parity with pycocotools / a plain panopticapi formula, data checks, bad input, and
overfitting through `python -m cvengine.run`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cvengine.adapters import ADAPTERS, adapter_class, load_model
from conftest import run_module


def _index_and_dataset(task, root, adapter):
    from cvengine.data.coco import CocoIndex
    from cvengine.tasks.instance.dataset import InstanceMaskDataset
    from cvengine.tasks.panoptic.dataset import PanopticDataset
    from cvengine.tasks.panoptic.dataset import PanopticIndex

    if task == "instance_segmentation":
        index = CocoIndex.load(root / "train" / "annotations.json", root / "train" / "images", keep_segmentation=True)
        return index, InstanceMaskDataset(index, resize=adapter.resize)
    index = PanopticIndex.load(root / "train" / "panoptic.json", root / "train" / "images", root / "train" / "panoptic")
    adapter.set_stuff_labels(index.stuff_labels)
    return index, PanopticDataset(index, resize=adapter.resize)


@pytest.mark.parametrize("task,family", [(t, f) for t in ("instance_segmentation", "panoptic_segmentation") for f in sorted(ADAPTERS[t])])
def test_family_trains_postprocesses_and_scores(task, family, tiny_model, check_unused_parameters, demo_instance, demo_panoptic):
    from cvengine.tasks import get_task

    root = demo_instance if task == "instance_segmentation" else demo_panoptic
    num_labels = 10 if task == "instance_segmentation" else 11
    model, processor, model_type, _ = load_model(tiny_model(task, family, num_labels), True, task, [str(i) for i in range(num_labels)])
    adapter = adapter_class(task, model_type)(model, processor)
    index, dataset = _index_and_dataset(task, root, adapter)
    samples = [dataset[i] for i in range(3)]
    assert all(s.masks.shape == (len(s.labels),) + s.image.shape[:2] for s in samples)
    batch = adapter.collate(samples)
    assert all(set(torch.unique(m).tolist()) <= {0.0, 1.0} for m in batch["mask_labels"])

    model.train()
    loss, _ = adapter.loss(model(**adapter.model_inputs(batch)))
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    check_unused_parameters(adapter, model)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        outputs = model(**adapter.model_inputs(batch, with_labels=False))
    if task == "panoptic_segmentation":
        adapter.object_threshold = 0.0  # a random model is never confident: keep every query
    predictions = adapter.postprocess(outputs, batch)
    assert [p["image_id"] for p in predictions] == [s.image_id for s in samples]
    for p, s in zip(predictions, samples):
        if task == "instance_segmentation":
            assert 0 < len(p["rles"]) <= 100 and p["rles"][0]["size"] == list(s.orig_size)
            assert isinstance(p["rles"][0]["counts"], str)
            assert (np.diff(p["scores"]) <= 0).all()
        else:
            assert p["segment_map"].shape == s.orig_size
            assert set(np.unique(p["segment_map"]).tolist()) - {0} == {seg["id"] for seg in p["segments"]}
    evaluator = get_task(task).evaluator(index)
    evaluator.update(predictions)
    metrics = evaluator.compute()
    main = "val/map" if task == "instance_segmentation" else "val/pq"
    assert main in metrics and all(math.isfinite(v) and -1.0 <= v <= 1.0 for v in metrics.values())


def test_segm_map_equals_cocoeval(demo_instance):
    """Our evaluator's segm mAP == pycocotools' COCOeval run by hand on the same results."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from cvengine.data.coco import CocoIndex
    from cvengine.data.dataset import boxes_from_masks
    from cvengine.data.masks import encode_mask
    from cvengine.tasks.instance.evaluate import InstanceSegmentationEvaluator

    ann_path = demo_instance / "val" / "annotations.json"
    index = CocoIndex.load(ann_path, demo_instance / "val" / "images", keep_segmentation=True)
    rng = np.random.default_rng(0)
    predictions = []
    for i in range(len(index)):
        masks, (_, labels) = index.masks(i), index.targets(i)
        noisy = []
        for m in masks:  # shifted copies: IoUs spread over the thresholds
            noisy.append(np.roll(m, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2))))
        wrong_label = (labels + 1) % 10
        all_masks = np.concatenate([np.stack(noisy), masks[:1]])
        all_labels = np.concatenate([labels, wrong_label[:1]])
        predictions.append({
            "image_id": int(index.image_ids[i]), "rles": [encode_mask(m) for m in all_masks], "boxes_xyxy_abs": boxes_from_masks(all_masks),
            "scores": rng.uniform(0.1, 1.0, len(all_masks)).astype(np.float32), "labels": all_labels,
        })
    evaluator = InstanceSegmentationEvaluator(index)
    evaluator.update(predictions)
    ours = evaluator.compute()

    gt = COCO(str(ann_path))
    dt = gt.loadRes([{k: r[k] for k in ("image_id", "category_id", "segmentation", "score")} for r in evaluator.records()])
    reference = COCOeval(gt, dt, iouType="segm")
    reference.evaluate(), reference.accumulate(), reference.summarize()
    assert 0.1 < ours["val/map"] < 0.99
    assert ours["val/map"] == pytest.approx(reference.stats[0], abs=1e-12)
    assert ours["val/map_50"] == pytest.approx(reference.stats[1], abs=1e-12)
    assert ours["val/bbox_map"] > 0


def plain_pq_stats(gt_map, gt_segments, pred_map, pred_segments, totals):
    """The panopticapi formula for one image, written per segment pair with boolean masks;
    adds per-category [tp, fp, fn, iou_sum] into `totals`."""
    def row(c):
        return totals.setdefault(c, [0, 0, 0, 0.0])

    void = gt_map == 0
    matched_gt, matched_pred = set(), set()
    for g, (gc, crowd) in gt_segments.items():
        if crowd:
            continue
        gm = gt_map == g
        for p, pc in pred_segments.items():
            if pc != gc:
                continue
            pm = pred_map == p
            inter = (gm & pm).sum()
            union = (gm | pm).sum() - (pm & void).sum()
            if union and inter / union > 0.5:
                row(gc)[0] += 1
                row(gc)[3] += inter / union
                matched_gt.add(g)
                matched_pred.add(p)
    for g, (gc, crowd) in gt_segments.items():
        if not crowd and g not in matched_gt:
            row(gc)[2] += 1
    for p, pc in pred_segments.items():
        if p in matched_pred:
            continue
        pm = pred_map == p
        crowd_mask = np.zeros_like(pm)
        for g, (gc, crowd) in gt_segments.items():
            if crowd and gc == pc:
                crowd_mask = gt_map == g
        if ((pm & void).sum() + (pm & crowd_mask).sum()) / pm.sum() > 0.5:
            continue
        row(pc)[1] += 1
    return totals


def stats_to_pq(totals, categories):
    out = {}
    for name, keep in (("pq", lambda c: True), ("pq_things", lambda c: c["isthing"]), ("pq_stuff", lambda c: not c["isthing"])):
        values = []
        for c in categories:
            tp, fp, fn, iou = totals.get(c["id"], [0, 0, 0, 0.0])
            if keep(c) and tp + fp + fn:
                values.append(iou / (tp + 0.5 * fp + 0.5 * fn))
        out[name] = sum(values) / len(values) if values else 0.0
    return out


def plain_pq(gt_map, gt_segments, pred_map, pred_segments, categories):
    return stats_to_pq(plain_pq_stats(gt_map, gt_segments, pred_map, pred_segments, {}), categories)


def test_pq_matches_plain_formula_with_void_crowd_and_unmatched():
    from cvengine.metrics.panoptic import PQStat

    categories = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 7, "isthing": 0}]
    gt = np.full((20, 20), 5)  # stuff 7
    gt[0:3, :] = 0  # void band
    gt[4:10, 2:8] = 1  # thing 1
    gt[12:18, 2:8] = 2  # thing 1, will be missed (FN)
    gt[4:12, 12:19] = 3  # crowd region of category 2
    gt_segments = {1: (1, False), 2: (1, False), 3: (2, True), 5: (7, False)}
    pred = np.full((20, 20), 9)  # stuff covering void too: void excluded from the union
    pred[4:10, 2:7] = 1  # matches gt 1 (IoU 30/36)
    pred[5:11, 13:18] = 2  # category 2 on the crowd region: not a false positive
    pred[0:3, 10:20] = 4  # category 1 on void only: not a false positive
    pred[12:14, 10:12] = 6  # category 2 elsewhere: false positive
    pred_segments = {1: 1, 2: 2, 4: 1, 6: 2, 9: 7}
    stat = PQStat()
    stat.update(gt, gt_segments, pred, pred_segments)
    ours = stat.average(categories)
    expected = plain_pq(gt, gt_segments, pred, pred_segments, categories)
    assert stat.tp[1] == 1 and stat.fn[1] == 1 and stat.fp[1] == 0 and stat.fp[2] == 1 and stat.tp[7] == 1
    for key in ("pq", "pq_things", "pq_stuff"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-12)
    # Stuff: gt 212 px, prediction 306 px of which 30 on void, intersection 208 -> IoU 208 / 280.
    assert ours["pq_stuff"] == pytest.approx(208 / 280) and stat.per_category(1)["sq"] == pytest.approx(30 / 36)


def test_pq_random_maps_match_plain_formula():
    from cvengine.metrics.panoptic import PQStat

    rng = np.random.default_rng(1)
    categories = [{"id": c, "isthing": int(c < 4)} for c in range(1, 6)]
    stat = PQStat()
    sums = []
    for _ in range(5):
        gt = rng.integers(0, 5, (4, 4)).repeat(6, 0).repeat(6, 1)
        pred = gt.copy()
        pred[rng.random(pred.shape) < 0.15] = rng.integers(1, 7)
        gt_segments = {g: (int(rng.integers(1, 6)), bool(rng.random() < 0.2)) for g in range(1, 5)}
        pred_segments = {p: int(rng.integers(1, 6)) if p > 4 else gt_segments[p][0] for p in np.unique(pred).tolist() if p}
        stat_one = PQStat()
        stat_one.update(gt, gt_segments, pred, pred_segments)
        assert stat_one.average(categories)["pq"] == pytest.approx(plain_pq(gt, gt_segments, pred, pred_segments, categories)["pq"], abs=1e-12)
        stat.merge(stat_one)
        sums.append(sum(stat_one.tp.values()))
    assert sum(sums) > 0


def test_to_panoptic_converter_keeps_every_instance(demo_instance, tmp_path):
    from cvengine.data.coco import CocoIndex
    from cvengine.data.masks import instances_to_panoptic
    from cvengine.tasks.panoptic.dataset import PanopticIndex

    ann = demo_instance / "val" / "annotations.json"
    instances_to_panoptic(ann, tmp_path / "pan.json", tmp_path / "pan", stuff=["background"])
    pan = PanopticIndex.load(tmp_path / "pan.json", demo_instance / "val" / "images", tmp_path / "pan")
    coco = CocoIndex.load(ann, demo_instance / "val" / "images", keep_segmentation=True)
    assert pan.class_names[-1] == "background" and pan.stuff_labels == [10]
    for i in range(len(coco)):
        masks, labels = pan.targets(i)
        inst = coco.masks(i)
        assert len(masks) == len(inst) + 1
        # Digits never overlap: each instance mask comes back exactly, background is the rest.
        assert sorted(m.sum() for m in masks[:-1]) == sorted(m.sum() for m in inst)
        assert masks.sum(0).max() == 1 and masks.sum() == masks.shape[1] * masks.shape[2]


def test_check_reports_panoptic_problems(demo_panoptic, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(demo_panoptic / "val", bad)
    (bad / "panoptic" / "000002.png").unlink()
    data = json.loads((bad / "panoptic.json").read_text())
    data["annotations"][0]["segments_info"].append({"id": 77, "category_id": 1, "iscrowd": 0})
    (bad / "panoptic.json").write_text(json.dumps(data))
    result = run_module("cvengine.data", "check", bad / "panoptic.json")
    assert result.returncode == 1
    assert f"panoptic PNG not found: {bad / 'panoptic' / '000002.png'}" in result.stdout
    assert "segment id 77 of segments_info does not occur in" in result.stdout
    ok = run_module("cvengine.data", "check", demo_panoptic / "val" / "panoptic.json")
    assert ok.returncode == 0, ok.stdout


def test_check_reports_broken_rle(demo_instance, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(demo_instance / "val", bad)
    data = json.loads((bad / "annotations.json").read_text())
    data["annotations"][0]["segmentation"]["size"] = [10, 10]
    data["annotations"][1]["segmentation"] = [[1, 2, 3]]
    (bad / "annotations.json").write_text(json.dumps(data))
    result = run_module("cvengine.data", "check", bad / "annotations.json")
    assert result.returncode == 1
    assert "RLE size [10, 10] differs from the image's [height, width] [160, 160]" in result.stdout
    assert "polygon 0 has 3 coordinates" in result.stdout


def _recipe(task, root, model, out, steps, lr, monitor_split="train"):
    ann = "annotations.json" if task == "instance_segmentation" else "panoptic.json"
    return f"""
task = "{task}"
[model]
name = "{model}"
[data]
root = "{root}"
batch_size = 8
num_workers = 0
[data.train]
images = "train/images"
annotations = "train/{ann}"
[data.val]
images = "{monitor_split}/images"
annotations = "{monitor_split}/{ann}"
[augment]
enabled = false
[train]
max_epochs = {steps}
lr = {lr}
backbone_lr_mult = 1.0
grad_clip = 1.0
eval_every_epochs = {steps}
output_dir = "{out}"
[tracking]
experiment = "tests"
run_name = "{task}"
"""


def test_bad_instance_data_exits_2_naming_the_file(demo_instance, tiny_model, tmp_path):
    import shutil

    shutil.copytree(demo_instance, tmp_path / "data")
    ann = tmp_path / "data" / "train" / "annotations.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["segmentation"] = {"size": [7, 7], "counts": "xx"}
    ann.write_text(json.dumps(data))
    recipe = tmp_path / "r.toml"
    recipe.write_text(_recipe("instance_segmentation", tmp_path / "data", tiny_model("instance_segmentation", "mask2former"), tmp_path / "runs", 1, 1e-3))
    result = run_module("cvengine.run", recipe, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    line = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and str(ann) in line[0] and "RLE size [7, 7]" in line[0]
    assert "Traceback" not in result.stderr


def test_bad_panoptic_data_exits_2_naming_the_file(demo_panoptic, tiny_model, tmp_path):
    import shutil

    shutil.copytree(demo_panoptic, tmp_path / "data")
    missing = tmp_path / "data" / "train" / "panoptic" / "000003.png"
    missing.unlink()
    recipe = tmp_path / "r.toml"
    recipe.write_text(_recipe("panoptic_segmentation", tmp_path / "data", tiny_model("panoptic_segmentation", "mask2former", 11), tmp_path / "runs", 1, 1e-3))
    result = run_module("cvengine.run", recipe, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    line = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and str(missing) in line[0]
    assert "Traceback" not in result.stderr


def test_instance_overfit_through_run_cli(demo_instance, tiny_model, tmp_path):
    """Measured: 8 demo images, batch 8, lr 3e-3, 300 steps -> segm mAP@0.5 1.0, segm mAP 0.62
    (at 240 steps 1.0 / 0.60; before training 0.0)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(_recipe("instance_segmentation", demo_instance, tiny_model("instance_segmentation", "mask2former"), tmp_path / "runs", 300, 3e-3))
    result = run_module("cvengine.run", recipe, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tests" / "instance_segmentation"
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    assert best["val/map_50"] >= 0.5 and best["val/map"] >= 0.3, best
    assert best["val/bbox_map_50"] > 0.3

    result = run_module("cvengine.evaluate", run_dir, "--checkpoint", "best", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert predictions and isinstance(predictions[0]["segmentation"]["counts"], str)
    assert {p["category_id"] for p in predictions} <= set(range(1, 11))
    scored = run_module("cvengine.metrics", "--annotations", demo_instance / "train" / "annotations.json", "--predictions", run_dir / "predictions.json", "--iou-type", "segm", "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["map_50"] == pytest.approx(best["val/map_50"], abs=1e-6)


PANOPTIC_THRESHOLD = 0.5


def test_panoptic_overfit_through_run_cli(demo_panoptic, tiny_model, tmp_path):
    """Measured: 8 demo images, batch 8, lr 3e-3, 300 steps -> PQ 0.75 (0.68 at 240 steps, 0.13 at 60; before training 0.0)."""
    from cvengine.metrics.panoptic import evaluate_panoptic

    recipe = tmp_path / "r.toml"
    recipe.write_text(_recipe("panoptic_segmentation", demo_panoptic, tiny_model("panoptic_segmentation", "mask2former", 11), tmp_path / "runs", 300, 3e-3))
    result = run_module("cvengine.run", recipe, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tests" / "panoptic_segmentation"
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    assert best["val/pq"] >= PANOPTIC_THRESHOLD and best["val/pq_stuff"] > 0.5, best

    result = run_module("cvengine.evaluate", run_dir, "--checkpoint", "best", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # The written COCO panoptic files score the same from disk.
    from_files = evaluate_panoptic(demo_panoptic / "train" / "panoptic.json", demo_panoptic / "train" / "panoptic", run_dir / "predictions.json", run_dir / "predictions")
    assert from_files["pq"] == pytest.approx(best["val/pq"], abs=1e-9)
