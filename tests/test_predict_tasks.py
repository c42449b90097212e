"""Predict, serving answers and ONNX export for classification and semantic segmentation models."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_module


def _with_metadata(model_dir: str, task: str, family: str) -> str:
    # What Engine.save_model writes beside a trained model; category ids 1..10 as in the demo data.
    with open(f"{model_dir}/cvengine.json", "w") as fh:
        json.dump({"task": task, "model_family": family, "class_names": [str(i) for i in range(10)], "label_to_category_id": list(range(1, 11))}, fh)
    return model_dir


@pytest.mark.parametrize("task, family", [("classification", "vit"), ("semantic_segmentation", "segformer")])
def test_predict_cli_and_serving_output(tiny_model, demo_detection, tmp_path, task, family):
    from PIL import Image

    from cvengine.data.images import read_image
    from cvengine.serving.predictor import Predictor

    model_dir = _with_metadata(tiny_model(task, family), task, family)
    files = sorted((demo_detection / "val" / "images").glob("*.jpg"))[:3]
    out = tmp_path / "pred"
    result = run_module("cvengine.predict", "--model", model_dir, *map(str, files), "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads((out / "predictions.json").read_text())
    predictor = Predictor(model_dir, device="cpu")
    expected = predictor.predict([read_image(str(f)) for f in files])
    if task == "classification":
        assert [r["file_name"] for r in document] == list(map(str, files))
        for record, exp in zip(document, expected):
            top = int(np.argmax(exp["scores"]))
            assert record["category_id"] == top + 1 and record["label"] == str(top)
            assert record["score"] == pytest.approx(float(exp["scores"][top]), abs=1e-5)
    else:
        assert document["category_ids"] == list(range(1, 11))
        for record, exp, f in zip(document["images"], expected, files):
            mask = np.asarray(Image.open(out / record["mask"]))
            assert mask.shape == read_image(str(f)).shape[:2]
            np.testing.assert_array_equal(mask, exp["semantic_map"])
    assert len(list((out / "rendered").glob("*.jpg"))) == 3
    answer = predictor.task.serving_output(expected[0], predictor.label_map)
    assert set(answer["category_ids"]) <= set(range(1, 11))


def test_classification_onnx_parity(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    pytest.importorskip("onnxscript", reason="needs the [onnx] extra")
    from cvengine.serving.onnx import export_onnx
    from cvengine.serving.predictor import Predictor

    model_dir = _with_metadata(tiny_model("classification", "vit"), "classification", "vit")
    summary = export_onnx(model_dir, tmp_path / "onnx")
    assert summary["max_abs_diff"] <= 1e-3 and summary["dynamic_batch"]
    images = [np.random.default_rng(i).integers(0, 256, (70 + 10 * i, 90, 3), dtype=np.uint8) for i in range(3)]
    got = Predictor(tmp_path / "onnx").predict(images)
    expected = Predictor(model_dir, device="cpu").predict(images)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g["scores"], e["scores"], atol=1e-5)
