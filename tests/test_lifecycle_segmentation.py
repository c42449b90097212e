"""Instance and panoptic segmentation through the model lifecycle: `python -m cvengine.predict`
writes the standard formats (COCO results with RLE masks; COCO panoptic PNGs + json) that our metrics
read back to evaluate's numbers, `--threshold` filters, the MLflow pyfunc model (loaded back from a
store, and over HTTP behind `cvengine.serve`) answers what the Predictor does, and each task's
evaluation report opens in headless Chromium with every image loaded."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_module
from test_instance_panoptic import _recipe
from test_report_tasks import assert_report_loads

# Steps that give non-zero segm mAP and PQ on the 8 demo images (~0.1 s each here; measured in
# test_instance_panoptic: segm mAP 0.62 and PQ 0.75 after 300 steps, both 0 at 60).
STEPS = 300


def _train(task, root, model, out) -> Path:
    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    recipe_path = out / "recipe.toml"
    recipe_path.write_text(_recipe(task, root, model, out / "runs", STEPS, 3e-3))
    engine = Engine(load_recipe(recipe_path), tracker=None, progress=False)
    engine.fit()
    return Path(engine.run_dir)


@pytest.fixture(scope="module")
def instance_run(demo_instance, tiny_model, tmp_path_factory) -> Path:  # noqa: F811
    return _train("instance_segmentation", demo_instance, tiny_model("instance_segmentation", "mask2former"), tmp_path_factory.mktemp("instance_run"))


@pytest.fixture(scope="module")
def panoptic_run(demo_panoptic, tiny_model, tmp_path_factory) -> Path:  # noqa: F811
    return _train("panoptic_segmentation", demo_panoptic, tiny_model("panoptic_segmentation", "mask2former", 11), tmp_path_factory.mktemp("panoptic_run"))


def _ids_by_name(annotations: Path) -> dict[str, int]:
    return {Path(i["file_name"]).name: int(i["id"]) for i in json.loads(annotations.read_text())["images"]}


def _pyfunc_and_served_answers(model_dir: Path, store: Path, image_file: Path, threshold: float) -> tuple[dict, dict]:
    """The logged pyfunc model on one base64 image: loaded back from a real MLflow store, and behind
    `python -m cvengine.serve` over HTTP on 127.0.0.1."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx
    import mlflow
    import pandas as pd

    from conftest import REPO
    from cvengine.serving.pyfunc import log_pyfunc_model

    uri = f"sqlite:///{store}/mlflow.db"
    image_b64 = base64.b64encode(image_file.read_bytes()).decode("ascii")
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("lifecycle")
        with mlflow.start_run():
            info = log_pyfunc_model(model_dir, name="pyfunc")
        loaded = mlflow.pyfunc.load_model(info.model_uri).predict(pd.DataFrame({"image": [image_b64]}), params={"threshold": threshold})[0]
    finally:
        mlflow.set_tracking_uri(None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    process = subprocess.Popen([sys.executable, "-m", "cvengine.serve", "--model", info.model_uri, "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()[-2000:]
            assert time.monotonic() < deadline, "the server did not answer /health within 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": {"image": [image_b64]}, "params": {"threshold": threshold}}, timeout=60)
        assert response.status_code == 200, response.text[:500]
        served = response.json()["predictions"][0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    return loaded, served


def test_instance_predict_metrics_threshold_and_pyfunc(instance_run, demo_instance, tmp_path):  # noqa: F811
    from cvengine.data.images import read_image
    from cvengine.evaluate import evaluate_run
    from cvengine.serving.predictor import Predictor

    metrics, _ = evaluate_run(str(instance_run), "best", "val")
    assert metrics["val/map_50"] > 0.1, metrics
    # segm AP tables, precision-recall, confusion matrix, and mask overlays of the 8 images.
    assert f"{metrics['val/map']:.3f}" in (instance_run / "report" / "report.html").read_text()
    assert_report_loads(instance_run / "report" / "report.html", ["COCO segm metrics", "Per-class AP", "Worst images"], 2 + 8, tmp_path)
    images = demo_instance / "train" / "images"
    out = tmp_path / "pred"
    result = run_module("cvengine.predict", "--model", instance_run, images, "--output", out, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads((out / "predictions.json").read_text())
    assert len(list((out / "rendered").glob("*.jpg"))) == 8
    assert {r["category_id"] for r in records} <= set(range(1, 11))
    assert all(isinstance(r["segmentation"]["counts"], str) and len(r["bbox"]) == 4 for r in records)

    # predict numbers images in input order; the ground truth's ids come back through file_name.
    ids = _ids_by_name(demo_instance / "train" / "annotations.json")
    remapped = tmp_path / "remapped.json"
    remapped.write_text(json.dumps([{**r, "image_id": ids[Path(r["file_name"]).name]} for r in records]))
    scored = run_module("cvengine.metrics", "--annotations", demo_instance / "train" / "annotations.json", "--predictions", remapped, "--iou-type", "segm", "--json")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert json.loads(scored.stdout)["map"] == pytest.approx(metrics["val/map"], abs=1e-6)

    strict = tmp_path / "strict"
    result = run_module("cvengine.predict", "--model", instance_run, images, "--output", strict, "--threshold", "0.5", "--no-render", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    kept = json.loads((strict / "predictions.json").read_text())
    assert kept and all(r["score"] >= 0.5 for r in kept)
    assert len(kept) == sum(r["score"] >= 0.5 for r in records) < len(records)

    first = sorted(images.glob("*.jpg"))[0]
    predictor = Predictor.load(instance_run, device="cpu")
    expected = predictor.task.serving_output(predictor.task.filter_prediction(predictor.predict([read_image(str(first))])[0], 0.5), predictor.label_map)
    for answer in _pyfunc_and_served_answers(instance_run / "model", tmp_path, first, 0.5):
        assert answer["masks_rle"] == expected["masks_rle"] and answer["labels"] == expected["labels"] and answer["category_ids"] == expected["category_ids"]
        np.testing.assert_allclose(answer["scores"], expected["scores"], atol=1e-6)
        np.testing.assert_allclose(answer["boxes_xyxy"], expected["boxes_xyxy"], atol=1e-4)
        assert len(answer["masks_rle"]) == len(answer["scores"]) > 0


def test_panoptic_predict_pq_threshold_and_pyfunc(panoptic_run, demo_panoptic, tmp_path):  # noqa: F811
    from PIL import Image

    from cvengine.data.images import read_image
    from cvengine.evaluate import evaluate_run
    from cvengine.metrics.panoptic import evaluate_panoptic, rgb_to_id
    from cvengine.serving.predictor import Predictor

    metrics, _ = evaluate_run(str(panoptic_run), "best", "val")
    assert metrics["val/pq"] > 0.05, metrics
    assert f"{metrics['val/pq']:.3f}" in (panoptic_run / "report" / "report.html").read_text()
    assert_report_loads(panoptic_run / "report" / "report.html", ["Per-class PQ / SQ / RQ", "Worst images", "Best images"], 8, tmp_path)
    images = demo_panoptic / "train" / "images"
    out = tmp_path / "pred"
    result = run_module("cvengine.predict", "--model", panoptic_run, images, "--output", out, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads((out / "predictions.json").read_text())
    assert len(list((out / "rendered").glob("*.jpg"))) == 8
    assert {c["id"] for c in document["categories"]} == {c["id"] for c in json.loads((demo_panoptic / "train" / "panoptic.json").read_text())["categories"]}

    ids = _ids_by_name(demo_panoptic / "train" / "panoptic.json")
    remapped = tmp_path / "remapped.json"
    remapped.write_text(json.dumps({**document, "annotations": [{**a, "image_id": ids[Path(a["image"]).name]} for a in document["annotations"]]}))
    from_files = evaluate_panoptic(demo_panoptic / "train" / "panoptic.json", demo_panoptic / "train" / "panoptic", remapped, out / "predictions")
    assert from_files["pq"] == pytest.approx(metrics["val/pq"], abs=1e-9)

    # --threshold drops segments (and their pixels) scoring below it.
    scores = sorted(s["score"] for a in document["annotations"] for s in a["segments_info"])
    # Half-way between two written scores: the json rounds scores, the filter sees them unrounded.
    cut = round((scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2, 7)
    strict = tmp_path / "strict"
    result = run_module("cvengine.predict", "--model", panoptic_run, images, "--output", strict, "--threshold", str(cut), "--no-render", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    kept = json.loads((strict / "predictions.json").read_text())
    kept_segments = [s for a in kept["annotations"] for s in a["segments_info"]]
    assert all(s["score"] >= cut for s in kept_segments) and len(kept_segments) == sum(s >= cut for s in scores)
    for a in kept["annotations"]:
        ids_in_png = set(np.unique(rgb_to_id(np.asarray(Image.open(strict / "predictions" / a["file_name"]).convert("RGB")))).tolist()) - {0}
        assert ids_in_png == {s["id"] for s in a["segments_info"]}

    first = sorted(images.glob("*.jpg"))[0]
    predictor = Predictor.load(panoptic_run, device="cpu")
    prediction = predictor.predict([read_image(str(first))])[0]
    expected = predictor.task.serving_output(prediction, predictor.label_map)["segments_info"]
    for answer in _pyfunc_and_served_answers(panoptic_run / "model", tmp_path, first, 0.0):
        assert answer["segments_info"] == expected and expected
        served_map = rgb_to_id(np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["panoptic_png"]))).convert("RGB")))
        np.testing.assert_array_equal(served_map, prediction["segment_map"])
