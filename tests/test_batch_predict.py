"""Batch prediction at scale, for real: Ray Data actors (`cvengine.predict --backend ray`) on a local
Ray cluster, and `mlflow.pyfunc.spark_udf` on a local Spark (`local[2]`), both against the
single-process `cvengine.predict` output on the same files (a folder with sub-folders)."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

# Tests that start a local Ray cluster (or Spark) run on one test worker, one after the other.
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def nested_images(demo_detection, tmp_path_factory) -> Path:
    """The demo's val images spread over sub-folders, as COCO file_names often are."""
    root = tmp_path_factory.mktemp("nested") / "images"
    for k, path in enumerate(sorted((demo_detection / "val" / "images").glob("*.jpg"))):
        target = root / ("a" if k % 2 else "b/c") / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return root


@pytest.fixture(scope="module")
def local_predictions(trained_detection_run, nested_images, tmp_path_factory):
    from cvengine.predict import predict

    out = tmp_path_factory.mktemp("local_pred")
    path = predict(str(trained_detection_run), [str(nested_images)], str(out), batch_size=4)
    records = json.loads(Path(path).read_text())
    assert len({r["file_name"] for r in records}) == len(list(nested_images.rglob("*.jpg"))) == 8
    return records, out


def _by_image(records: list[dict]) -> dict:
    """{file name: (N, 6) rows [category_id, score, x, y, w, h] sorted}: order-free comparison."""
    out: dict = {}
    for r in records:
        out.setdefault(Path(r["file_name"]).name, []).append([r["category_id"], r["score"], *r["bbox"]])
    return {k: np.array(sorted(v)) for k, v in out.items()}


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name][:, 0], b[name][:, 0], err_msg=name)
        np.testing.assert_allclose(a[name][:, 1:], b[name][:, 1:], atol=1e-4, err_msg=name)


@pytest.mark.timeout(300)
def test_ray_data_backend_equals_single_process(trained_detection_run, nested_images, local_predictions, tmp_path):
    ray = pytest.importorskip("ray")
    from cvengine.predict import predict

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    records, local_out = local_predictions
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20)
    try:
        path = predict(str(trained_detection_run), [str(nested_images)], str(tmp_path), batch_size=3, backend="ray", actors=2)
    finally:
        ray.shutdown()
    ray_records = json.loads(Path(path).read_text())
    # Same rows in the same order (file order, image ids 1..8), same values.
    assert [(r["image_id"], r["file_name"]) for r in ray_records] == [(r["image_id"], r["file_name"]) for r in records]
    _assert_same(_by_image(ray_records), _by_image(records))
    assert sorted(p.name for p in (tmp_path / "rendered").iterdir()) == sorted(p.name for p in (local_out / "rendered").iterdir())


def _java_available() -> bool:
    return shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))


@pytest.mark.timeout(420)
@pytest.mark.skipif(not _java_available(), reason="Spark needs a Java runtime (CI installs default-jre-headless)")
def test_spark_udf_equals_predict(trained_detection_run, nested_images, local_predictions, tmp_path, monkeypatch):
    pytest.importorskip("pyspark")
    import mlflow

    from cvengine.serving.pyfunc import log_pyfunc_model
    from cvengine.serving.spark import image_udf

    records, _ = local_predictions
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # Spark's Python workers run this interpreter and import this checkout's cvengine.
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    with mlflow.start_run():
        info = log_pyfunc_model(trained_detection_run / "model")

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (
        SparkSession.builder.master("local[2]").appName("cvengine-test")
        .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    try:
        predict_udf = image_udf(spark, info.model_uri)
        # A DataFrame of paths, read as bytes by Spark itself.
        paths = [str(p) for p in sorted(nested_images.rglob("*.jpg"))]
        images = spark.read.format("binaryFile").load(paths)
        scored = images.withColumn("prediction", predict_udf(F.base64("content"))).select("path", "prediction").collect()
    finally:
        spark.stop()
    assert len(scored) == 8
    spark_records = []
    for row in scored:
        p = row["prediction"]
        for box, score, category in zip(p["boxes_xyxy"], p["scores"], p["category_ids"]):
            x0, y0, x1, y1 = box
            spark_records.append({"file_name": row["path"], "category_id": category, "score": score, "bbox": [x0, y0, x1 - x0, y1 - y0]})
    _assert_same(_by_image(spark_records), _by_image(records))
