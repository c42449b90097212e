"""ONNX export of a detection family: ONNX Runtime matches PyTorch, and cvengine.predict runs the
exported folder with the same answers as the PyTorch model folder."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_module

pytest.importorskip("onnxruntime", reason="ONNX export needs the [onnx] extra: pip install 'cvengine[onnx]'")
pytest.importorskip("onnxscript", reason="ONNX export needs the [onnx] extra: pip install 'cvengine[onnx]'")


def test_yolos_onnx_parity_and_predict(tiny_model, demo_detection, tmp_path):
    from cvengine.data.images import read_image
    from cvengine.serving.predictor import Predictor

    model_dir = tiny_model("detection", "yolos")
    out = tmp_path / "yolos-onnx"
    result = run_module("cvengine.export", "--model", model_dir, "--format", "onnx", "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "max abs diff" in result.stdout
    # Quiet: our lines only, not the exporter's optimiser log (a line per initializer) or onnxruntime's.
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= 3 and not any("Replaced initializer" in line or "onnxruntime" in line for line in lines), lines[:10]
    meta = json.loads((out / "cvengine.json").read_text())["onnx"]
    assert meta["max_abs_diff"] <= 1e-3 and meta["dynamic_batch"] is True
    assert (out / "preprocessor_config.json").exists() and (out / "config.json").exists()

    files = sorted((demo_detection / "val" / "images").glob("*.jpg"))[:3]
    images = [read_image(str(f)) for f in files]
    onnx_predictions = Predictor(out).predict(images)
    torch_predictions = Predictor(model_dir, device="cpu").predict(images)
    for got, expected in zip(onnx_predictions, torch_predictions):
        np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-4)
        np.testing.assert_allclose(got["boxes_xyxy_abs"], expected["boxes_xyxy_abs"], atol=1e-2)

    pred_dir = tmp_path / "pred"
    result = run_module("cvengine.predict", "--model", out, *map(str, files), "--output", pred_dir, "--no-render")
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads((pred_dir / "predictions.json").read_text())
    assert len(records) == sum(len(p["scores"]) for p in onnx_predictions)


# Classifier families served by the generic adapter, one whose exported graph keeps the image size
# dynamic and one whose graph fixes it (the README lists the others, measured the same way).
CLASSIFIERS = [("data2vec-vision", True), ("dinov2_with_registers", False)]


@pytest.mark.parametrize("family, dynamic_size", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_classifier_onnx_matches_pytorch(family, dynamic_size, tiny_model, tmp_path):
    """The export of a newer classifier family answers like the PyTorch model on a batch it did not
    see at export time (another batch size), within 1e-4."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForImageClassification

    from cvengine.serving.onnx import export_onnx

    model_dir = tiny_model("classification", family)
    summary = export_onnx(model_dir, tmp_path / "onnx")
    assert summary["dynamic_batch"] is True and summary["dynamic_size"] is dynamic_size
    height, width = summary["export_size"]
    pixels = torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"pixel_values": pixels.numpy()})
    with torch.no_grad():
        expected = AutoModelForImageClassification.from_pretrained(model_dir).eval()(pixel_values=pixels).logits.numpy()
    print(f"{family}: max abs diff {np.abs(got - expected).max():.2g}")
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
