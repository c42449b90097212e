"""MLflow pyfunc model and registry on a real sqlite store: logged at the end of training, the
champion alias moves only on improvement, and models:/NAME@champion predicts what the checkpoint does."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import detection_recipe


@pytest.fixture(scope="module")
def registered(tiny_model, demo_detection, trained_detection_run, tmp_path_factory):
    import mlflow

    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    output = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{output}/mlflow.db"
    # Start from the trained run's weights so that the served model is not random; 1 more epoch.
    recipe = load_recipe(
        detection_recipe(demo_detection, trained_detection_run / "model", output, max_epochs=1),
        overrides=[f'tracking.uri="{uri}"', "tracking.log_model=true", 'tracking.registered_model="digits"'],
    )
    engine = Engine(recipe, progress=False)
    state = engine.fit()
    mlflow.set_tracking_uri(uri)
    yield uri, engine, state
    mlflow.set_tracking_uri(None)


def test_alias_moves_only_on_improvement(registered):
    from mlflow import MlflowClient

    from cvengine.serving.pyfunc import register_with_alias

    uri, engine, state = registered
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    first = client.get_model_version_by_alias("digits", "champion")
    assert int(first.version) == 1
    assert float(first.tags["cvengine.monitor_value"]) == pytest.approx(state.best_metric)
    source = f"models:/{first.model_id}" if getattr(first, "model_id", None) else first.source

    version, moved = register_with_alias(source, "digits", "champion", "val/map", state.best_metric - 0.01, "max")
    assert (version, moved) == (2, False)
    assert int(client.get_model_version_by_alias("digits", "champion").version) == 1

    version, moved = register_with_alias(source, "digits", "champion", "val/map", state.best_metric + 0.01, "max")
    assert (version, moved) == (3, True)
    assert int(client.get_model_version_by_alias("digits", "champion").version) == 3

    # A loss is better when lower; another metric than the holder's never moves the alias.
    version, moved = register_with_alias(source, "digits", "champion", "val/loss", 0.0, "min")
    assert moved is False and int(client.get_model_version_by_alias("digits", "champion").version) == 3


def test_champion_predicts_what_the_checkpoint_predicts(registered, demo_detection):
    import base64

    import mlflow
    import pandas as pd

    from cvengine.data.images import read_image
    from cvengine.serving.predictor import Predictor

    _, engine, _ = registered
    files = sorted((demo_detection / "val" / "images").glob("*.jpg"))[:3]
    loaded = mlflow.pyfunc.load_model("models:/digits@champion")
    answers = loaded.predict(pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode() for f in files]}))
    expected = Predictor(engine.run_dir / "model", device="cpu").predict([read_image(str(f)) for f in files])
    assert len(answers) == len(expected) == 3
    for answer, exp in zip(answers, expected):
        np.testing.assert_allclose(np.asarray(answer["boxes_xyxy"]), exp["boxes_xyxy_abs"], atol=1e-5)
        np.testing.assert_allclose(np.asarray(answer["scores"]), exp["scores"], atol=1e-5)
        assert answer["category_ids"] == (np.asarray(exp["labels"]) + 1).tolist()  # demo ids are label + 1
    # The same through the engine's own evaluation path: the checkpoint's weights, its processor.
    engine.load_weights(engine.run_dir / "checkpoints" / "best")
    batch = next(iter(engine._loader("val", train=False)[1]))
    import torch

    with torch.inference_mode():
        engine.model.eval()
        reference = engine.adapter.postprocess(engine.model(**engine.adapter.model_inputs(batch, with_labels=False)), batch)
    first = [p for p in reference if p["image_id"] == int(files[0].stem)][0]
    np.testing.assert_allclose(np.asarray(answers[0]["scores"]), first["scores"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(answers[0]["boxes_xyxy"]), first["boxes_xyxy_abs"], atol=1e-4)
