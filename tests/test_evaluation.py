"""Evaluation: every task's evaluator reduces small per-rank states that merge to the single-process
numbers, the split's loss is the model's own, the COCO ground truth is built once per split, and
instance post-processing upsamples only the top-k masks."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cvengine.tasks import get_task
from conftest import REPO, detection_recipe


def _index(task: str, root):
    from cvengine.recipe import load_recipe

    split = {"images": "val/images", "annotations": "val/annotations.json"}
    if task == "panoptic_segmentation":
        split = {"images": "val/images", "annotations": "val/panoptic.json", "masks": "val/panoptic"}
    recipe = load_recipe({"task": task, "model": {"name": "unused"}, "data": {"root": str(root), "val": split}})
    return get_task(task).load_index(recipe, "val")


def _predictions(task: str, index, rng) -> list[dict]:
    """Ground truth with noise, as the adapters' postprocess gives predictions."""
    from cvengine.data.dataset import boxes_from_masks
    from cvengine.data.masks import encode_mask

    out = []
    for i, image_id in enumerate(index.image_ids.tolist()):
        if task == "detection":
            boxes, labels = index.targets(i)
            boxes = boxes + rng.normal(0, 2, boxes.shape).astype(np.float32)
            out.append({"image_id": image_id, "boxes_xyxy_abs": boxes, "scores": rng.uniform(0.2, 1, len(boxes)).astype(np.float32), "labels": labels})
        elif task == "classification":
            scores = rng.dirichlet(np.ones(index.num_classes)).astype(np.float32)
            out.append({"image_id": image_id, "scores": scores})
        elif task == "semantic_segmentation":
            label_map = index.semantic_map(i).copy()
            label_map[label_map == 255] = 0
            flip = rng.random(label_map.shape) < 0.1
            label_map[flip] = rng.integers(0, index.num_classes, int(flip.sum()))
            out.append({"image_id": image_id, "semantic_map": label_map.astype(np.uint8)})
        elif task == "instance_segmentation":
            masks, (_, labels) = index.masks(i), index.targets(i)
            masks = np.stack([np.roll(m, int(rng.integers(-2, 3)), axis=1) for m in masks])
            out.append({"image_id": image_id, "rles": [encode_mask(m) for m in masks], "boxes_xyxy_abs": boxes_from_masks(masks), "scores": rng.uniform(0.2, 1, len(masks)).astype(np.float32), "labels": labels})
        else:
            segment_map = index.segment_map(i).astype(np.int32)
            segments = [{"id": sid, "label": label, "score": float(rng.uniform(0.5, 1))} for sid, label, crowd in index.segments[i] if not crowd and (segment_map == sid).any()]
            out.append({"image_id": image_id, "segment_map": segment_map, "segments": segments})
    return out


@pytest.mark.parametrize("task", ["detection", "classification", "semantic_segmentation", "instance_segmentation", "panoptic_segmentation"])
def test_per_rank_states_merge_to_the_single_process_metrics(task, request, tmp_path):
    fixture = {"detection": "demo_detection", "classification": "demo_classification", "semantic_segmentation": "demo_semantic", "instance_segmentation": "demo_instance", "panoptic_segmentation": "demo_panoptic"}[task]
    root = request.getfixturevalue(fixture)
    index = _index(task, root)
    predictions = _predictions(task, index, np.random.default_rng(0))
    evaluator_of = get_task(task).evaluator

    whole = evaluator_of(index, tmp_path / "whole.json")
    whole.update(predictions)
    # Two ranks, each with half the images; the last batch's padding repeats an image on rank 1.
    halves = [evaluator_of(index, tmp_path / "ranks.json") for _ in range(2)]
    cut = len(predictions) // 2
    halves[0].update(predictions[:cut])
    halves[1].update(predictions[cut:] + predictions[:1])
    states = [pickle_round_trip(h.state()) for h in halves]  # what gather_object moves between processes
    halves[0].merge(states)
    assert halves[0].num_images == whole.num_images == len(index)
    expected, merged = whole.compute(), halves[0].compute()
    assert expected.keys() == merged.keys()
    for key, value in expected.items():
        assert merged[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    whole.write()
    halves[0].write()
    if task in ("semantic_segmentation", "panoptic_segmentation"):
        assert json.loads((tmp_path / "whole.json").read_text()).keys() == json.loads((tmp_path / "ranks.json").read_text()).keys()
    else:
        assert json.loads((tmp_path / "whole.json").read_text()) == json.loads((tmp_path / "ranks.json").read_text())


def pickle_round_trip(state):
    import pickle

    return pickle.loads(pickle.dumps(state))


def test_detection_file_scores_equal_the_run_and_the_ground_truth_is_built_once(demo_detection, tmp_path):
    """The predictions file holds the rows that were scored (full precision): pycocotools on the file
    gives the evaluator's numbers; a second evaluation re-uses the ground truth built by the first."""
    import shutil

    from cvengine.metrics.coco import evaluate_coco

    data = tmp_path / "data"
    shutil.copytree(demo_detection, data)
    index = _index("detection", data)
    predictions = _predictions("detection", index, np.random.default_rng(1))
    first = get_task("detection").evaluator(index, tmp_path / "predictions.json")
    first.update(predictions)
    metrics = first.compute()
    first.write()
    from_file = evaluate_coco(str(data / "val" / "annotations.json"), str(tmp_path / "predictions.json"))
    # The 12 COCO numbers; per-class AP (val/ap/<class>) comes on top.
    assert {f"val/{k}": v for k, v in from_file.items()} == {k: v for k, v in metrics.items() if not k.startswith("val/ap/")}
    (data / "val" / "annotations.json").unlink()
    second = get_task("detection").evaluator(index)
    second.update(predictions)
    assert second.compute() == metrics


@pytest.fixture(scope="module")
def rt_detr_engine(tiny_model, demo_detection, tmp_path_factory):
    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    out = tmp_path_factory.mktemp("val_loss")
    recipe = load_recipe(detection_recipe(demo_detection, tiny_model("detection", "rt_detr"), out, max_epochs=2), overrides=["train.monitor=val/loss"])
    engine = Engine(recipe, tracker=None, progress=False)
    engine.fit()
    return engine


def test_val_loss_is_the_models_own_loss_on_the_split_and_is_minimised(rt_detr_engine):
    engine = rt_detr_engine
    assert engine.mode == "min"
    history = engine.state.history
    assert all(math.isfinite(row["val/loss"]) for row in history)
    assert engine.state.best_epoch == 1 + int(np.argmin([row["val/loss"] for row in history]))
    # By hand: the model in evaluation mode, with the labels, over the val loader's batches.
    _, loader = engine._loader("val", train=False)
    model = engine.model.eval()
    with torch.inference_mode():
        losses = [float(model(**engine.adapter.model_inputs(batch, with_labels=True)).loss) for batch in loader]
    assert engine.evaluate("val")["val/loss"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_instance_postprocessing_upsamples_only_the_top_masks():
    """200 queries at a 1024 x 2048 original size: upsampling every query mask first would need
    200 x 2M floats (1.6 GB) at once; the post-processing stays far below that."""
    script = textwrap.dedent(
        """
        import resource, sys, torch
        from types import SimpleNamespace
        from cvengine.adapters.mask_classification import InstanceSegmentationAdapter
        torch.manual_seed(0)
        adapter = InstanceSegmentationAdapter.__new__(InstanceSegmentationAdapter)
        outputs = SimpleNamespace(class_queries_logits=torch.randn(1, 200, 11), masks_queries_logits=torch.randn(1, 200, 64, 128))
        batch = {"pixels_uint8": torch.zeros(1, 3, 256, 512, dtype=torch.uint8), "image_ids": torch.tensor([1]),
                 "orig_sizes": torch.tensor([[1024, 2048]]), "input_sizes": torch.tensor([[256, 512]])}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        (prediction,) = adapter.postprocess(outputs, batch)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(len(prediction["rles"]), round(grown))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    count, grown_mb = map(int, done.stdout.split())
    assert count == 100
    assert grown_mb < 450, f"post-processing grew the process by {grown_mb} MB (upsampling every mask first: over 1,100)"


def test_instance_postprocessing_equals_upsampling_every_mask():
    """The top-k-first path gives what scoring every upsampled query mask gives (Mask2Former's rule)."""
    from types import SimpleNamespace

    import torch.nn.functional as F
    from pycocotools import mask as mask_utils

    from cvengine.adapters.mask_classification import InstanceSegmentationAdapter

    torch.manual_seed(1)
    adapter = InstanceSegmentationAdapter.__new__(InstanceSegmentationAdapter)
    class_logits, mask_logits = torch.randn(1, 30, 4), torch.randn(1, 30, 16, 24)
    batch = {"pixels_uint8": torch.zeros(1, 3, 64, 96, dtype=torch.uint8), "image_ids": torch.tensor([7]), "orig_sizes": torch.tensor([[90, 120]]), "input_sizes": torch.tensor([[60, 90]])}
    (ours,) = adapter.postprocess(SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits), batch)
    # Reference: every query's mask at the original size, then the top 100 (query, class) pairs.
    up = F.interpolate(mask_logits, size=(64, 96), mode="bilinear", align_corners=False)[:, :, :60, :90]
    up = F.interpolate(up, size=(90, 120), mode="bilinear", align_corners=False)[0]  # (Q, H, W)
    scores = class_logits[0].softmax(-1)[:, :-1]
    top, index = scores.flatten().topk(min(100, scores.numel()))
    query = index // 3
    binary = up[query] > 0
    mask_score = (up[query].sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    final = (top * mask_score).numpy()
    order = np.argsort(-final, kind="stable")
    np.testing.assert_allclose(ours["scores"], final[order], rtol=1e-5)
    np.testing.assert_array_equal(ours["labels"], (index % 3).numpy()[order])
    decoded = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in ours["rles"]]).transpose(2, 0, 1)
    np.testing.assert_array_equal(decoded, binary.numpy()[order])
