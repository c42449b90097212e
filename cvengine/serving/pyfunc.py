"""Logging a model folder as an MLflow pyfunc model, and registering it with a champion alias that
moves only when the new version's main metric beats the current holder's."""
from __future__ import annotations

import base64
import io
import logging
import math
import os
from pathlib import Path

from cvengine.errors import CvengineError

log = logging.getLogger("cvengine")

# Model version tags holding the metric the alias decision compares.
METRIC_TAG, VALUE_TAG, MODE_TAG = "cvengine.monitor", "cvengine.monitor_value", "cvengine.monitor_mode"


def _example_image_b64() -> str:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 127, np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pip_requirements() -> list[str]:
    import cvengine

    # Ranges, never a pinned torch build: pinning would pull a CUDA wheel into CPU serving images.
    return [f"cvengine=={cvengine.__version__}", "torch>=2.4", "transformers>=5.0,<6", "mlflow>=3.0", "pillow>=10", "safetensors>=0.4", "supervision>=0.25"]


def log_pyfunc_model(model_dir: str | os.PathLike, name: str = "model", registered_model: str | None = None):
    """Log `model_dir` (config, safetensors weights, processor, cvengine.json) as a pyfunc model in the
    active MLflow run (one is started if none is). Returns mlflow's ModelInfo."""
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from cvengine.serving import pyfunc_model

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists() or not (model_dir / "model.safetensors").exists():
        raise CvengineError(f"{model_dir}: not a model folder with safetensors weights (config.json, model.safetensors)")
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", pyfunc_model.IMAGE_COLUMN)]),
        params=ParamSchema([ParamSpec("threshold", "double", 0.0)]),
    )
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=pyfunc_model.__file__,
        artifacts={"model": str(model_dir)},
        signature=signature,
        input_example=pd.DataFrame({pyfunc_model.IMAGE_COLUMN: [_example_image_b64()]}),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model,
    )


def _better(value: float, than: float, mode: str) -> bool:
    return value > than if mode == "max" else value < than


def register_with_alias(model_uri: str, name: str, alias: str = "champion", metric: str | None = None, value: float | None = None, mode: str = "max"):
    """Register `model_uri` as a new version of `name`; move `alias` to it only when `value` (the
    run's `metric`) beats the alias holder's, or no version holds the alias. Returns (version number, moved)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    version = int(mlflow.register_model(model_uri, name).version)
    has_value = value is not None and not math.isnan(float(value))
    if has_value:
        client.set_model_version_tag(name, version, METRIC_TAG, metric)
        client.set_model_version_tag(name, version, VALUE_TAG, repr(float(value)))
        client.set_model_version_tag(name, version, MODE_TAG, mode)
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None
    if holder is None:
        moved, why = True, f"no version held '{alias}'"
    elif not has_value:
        moved, why = False, f"version {version} has no {metric or 'metric'} value to compare"
    elif holder.tags.get(METRIC_TAG) != metric or VALUE_TAG not in holder.tags:
        moved, why = False, f"version {holder.version} (holding '{alias}') was scored on {holder.tags.get(METRIC_TAG) or 'no metric'}, not {metric}: move the alias by hand if wanted"
    else:
        held = float(holder.tags[VALUE_TAG])
        moved = _better(float(value), held, mode)
        why = f"{metric} {float(value):.5g} {'beats' if moved else 'does not beat'} {held:.5g} of version {holder.version}"
    if moved:
        client.set_registered_model_alias(name, alias, version)
        log.info(f"registered {name} version {version}; alias '{alias}' moved to it ({why})")
    else:
        log.info(f"registered {name} version {version}; alias '{alias}' stays on version {holder.version} ({why})")
    return version, moved
