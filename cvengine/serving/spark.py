"""Scoring Spark DataFrames of images with a logged cvengine model (Databricks' batch path).

    from pyspark.sql import functions as F
    from cvengine.serving.spark import image_udf

    predict = image_udf(spark, "models:/digits@champion")
    images = spark.read.format("binaryFile").load("/Volumes/main/vision/raw/*.jpg")   # path, content, …
    scored = images.withColumn("prediction", predict(F.base64("content")))

`image_udf` is `mlflow.pyfunc.spark_udf` with the Spark result type of the model's task (a struct
with the same fields as the model's answer over HTTP), so the column holds the same values as
`cvengine.serve` and `cvengine.predict` give. The model's input is base64 text, as over HTTP: a
column of file bytes goes through `F.base64`, a column of paths through Spark's binaryFile reader.
"""
from __future__ import annotations

_DETECTION = "boxes_xyxy array<array<double>>, scores array<double>, labels array<string>, category_ids array<bigint>"

# Spark DDL of each task's serving answer (tasks/<task>/results.py `serving_output`).
RESULT_TYPES = {
    "detection": _DETECTION,
    "instance_segmentation": _DETECTION + ", masks_rle array<struct<size: array<bigint>, counts: string>>",
    "classification": "labels array<string>, category_ids array<bigint>, scores array<double>",
    "semantic_segmentation": "mask_png string, labels array<string>, category_ids array<bigint>",
    "panoptic_segmentation": "segments_info array<struct<id: bigint, category_id: bigint, score: double, area: bigint, iscrowd: bigint, label: string>>, panoptic_png string",
}


def result_type(model_uri: str) -> str:
    """The Spark DDL of the answers of the cvengine model at `model_uri` (its task read from cvengine.json)."""
    from cvengine.adapters import load_config
    from cvengine.serving.predictor import read_metadata, resolve_model_dir

    model_dir = resolve_model_dir(model_uri)
    return RESULT_TYPES[read_metadata(model_dir, load_config(str(model_dir)))["task"]]


def image_udf(spark, model_uri: str, env_manager: str = "local", **kwargs):
    """A Spark UDF: a column of base64-encoded image files in, the model's answer per row out.

    env_manager "local" runs the model in the executors' own Python (cvengine installed there, as on a
    Databricks cluster with the wheel attached); "virtualenv" / "uv" build the logged requirements."""
    import mlflow

    return mlflow.pyfunc.spark_udf(spark, model_uri, result_type=result_type(model_uri), env_manager=env_manager, **kwargs)
