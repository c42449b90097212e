"""A fine-tuned checkpoint straight from the hub, without training: `cvengine.predict --model` on a
Hugging Face folder (no cvengine.json: the task from the head's class name, the labels from id2label)
and `cvengine.evaluate` with a recipe whose model is such a checkpoint. The hub is unreachable in
tests: the folders are saved from the tiny configurations, as `save_pretrained` writes hub models."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import run_module

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _hub_folder(tiny_folder: str, out, names: list[str]):
    """A copy of a tiny checkpoint folder whose config names its classes, as a fine-tuned hub model's does."""
    shutil.copytree(tiny_folder, out)
    config = json.loads((out / "config.json").read_text())
    config["id2label"] = {str(i): n for i, n in enumerate(names)}
    config["label2id"] = {n: i for i, n in enumerate(names)}
    (out / "config.json").write_text(json.dumps(config))
    assert not (out / "cvengine.json").exists()
    return out


@pytest.mark.parametrize("task, family, expected_task", [("classification", "vit", "classification"), ("detection", "rt_detr", "detection"), ("panoptic_segmentation", "mask2former", "panoptic_segmentation"), ("semantic_segmentation", "segformer", "semantic_segmentation")])
def test_task_and_labels_come_from_the_checkpoint(task, family, expected_task, tiny_model, tmp_path):
    from transformers import AutoConfig

    from cvengine.serving.predictor import Predictor

    folder = _hub_folder(tiny_model(task, family), tmp_path / "hub", DIGITS)
    predictor = Predictor(folder, device="cpu")
    assert predictor.metadata["task"] == expected_task and predictor.label_map.names == DIGITS
    assert AutoConfig.from_pretrained(folder).architectures[0].endswith(("ForImageClassification", "ForObjectDetection", "ForUniversalSegmentation", "ForSemanticSegmentation"))


def test_predict_cli_on_a_hub_classifier_matches_transformers(tiny_model, demo_detection, tmp_path):
    """The CLI's top-1 label and score equal those of transformers' own processor + model."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = _hub_folder(tiny_model("classification", "vit"), tmp_path / "hub", DIGITS)
    files = sorted((demo_detection / "val" / "images").glob("*.jpg"))[:4]
    result = run_module("cvengine.predict", "--model", folder, *map(str, files), "--output", tmp_path / "out", "--no-render")
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    model, processor = AutoModelForImageClassification.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        probs = model(**processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")).logits.softmax(-1)
    for record, row in zip(records, probs):
        top = int(row.argmax())
        assert record["label"] == DIGITS[top] and record["category_id"] == top
        assert record["score"] == pytest.approx(float(row[top]), abs=0.02)


def test_predict_cli_on_a_hub_detector_matches_transformers(tiny_model, demo_detection, tmp_path):
    """Boxes and scores of the CLI against transformers' processor + post_process_object_detection."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    folder = _hub_folder(tiny_model("detection", "rt_detr"), tmp_path / "hub", DIGITS)
    image = sorted((demo_detection / "val" / "images").glob("*.jpg"))[0]
    result = run_module("cvengine.predict", "--model", folder, str(image), "--output", tmp_path / "out", "--no-render")
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    model, processor = AutoModelForObjectDetection.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder)
    pil = Image.open(image).convert("RGB")
    with torch.no_grad():
        outputs = model(**processor(images=[pil], return_tensors="pt"))
    theirs = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(pil.height, pil.width)])[0]
    top = int(theirs["scores"].argmax())
    best = max(records, key=lambda r: r["score"])
    x0, y0, x1, y1 = theirs["boxes"][top].tolist()
    assert best["category_id"] == int(theirs["labels"][top])
    assert best["score"] == pytest.approx(float(theirs["scores"][top]), abs=0.02)
    np.testing.assert_allclose(best["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=2.0)


def test_evaluate_a_hub_detector_with_a_recipe(tiny_model, demo_detection, tmp_path):
    """A checkpoint whose id2label names the data set's classes in another order: the head is kept
    with its rows taken by name, evaluation runs without training, and the written COCO results
    score the same through pycocotools."""
    import tomli_w
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations = json.loads((demo_detection / "val" / "annotations.json").read_text())
    names = [c["name"] for c in sorted(annotations["categories"], key=lambda c: c["id"])]
    folder = _hub_folder(tiny_model("detection", "rt_detr"), tmp_path / "hub", list(reversed(names)))
    recipe = {
        "task": "detection",
        "model": {"name": str(folder), "pretrained": True},
        "data": {"root": str(demo_detection), "batch_size": 4, "num_workers": 0, "val": {"images": "val/images", "annotations": "val/annotations.json"}},
        "train": {"output_dir": str(tmp_path / "runs")},
        "tracking": {"experiment": "hub"},
    }
    (tmp_path / "eval.toml").write_text(tomli_w.dumps(recipe))
    result = run_module("cvengine.evaluate", tmp_path / "eval.toml", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = next((tmp_path / "runs" / "hub").glob("eval-*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())["evaluations"]
    (key, scores), = metrics.items()
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert predictions and {p["category_id"] for p in predictions} <= {c["id"] for c in annotations["categories"]}
    gt = COCO(str(demo_detection / "val" / "annotations.json"))
    coco_eval = COCOeval(gt, gt.loadRes([{k: p[k] for k in ("image_id", "category_id", "bbox", "score")} for p in predictions]), "bbox")
    coco_eval.evaluate(), coco_eval.accumulate(), coco_eval.summarize()
    assert scores["val/map"] == pytest.approx(coco_eval.stats[0], abs=1e-6)


def test_a_folder_without_class_names_is_one_line(tiny_model, demo_detection, tmp_path):
    """config.json with id2label = null (as some exporters write it): transformers would assume two
    labels and fail on the head's size with a traceback; the CLI names the file and what to add."""
    folder = _hub_folder(tiny_model("classification", "vit"), tmp_path / "hub", DIGITS)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"], config["label2id"] = None, None
    (folder / "config.json").write_text(json.dumps(config))
    image = sorted((demo_detection / "val" / "images").glob("*.jpg"))[0]
    result = run_module("cvengine.predict", "--model", folder, str(image), "--output", tmp_path / "out", "--no-render")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {folder / 'config.json'} has no id2label: the model's class names are unknown; add id2label (label id -> name) to it, or use the model/ folder a cvengine run wrote"]
    assert not (tmp_path / "out" / "predictions.json").exists()
