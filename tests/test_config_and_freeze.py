"""model.config (attributes of the model's config set before it is built) and train.freeze
(parameters left out of training), checked on the loaded model and on the weights after training."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from conftest import detection_recipe, run_module
from cvengine import Engine, load_recipe
from cvengine.errors import RecipeError


@pytest.mark.parametrize("pretrained", [True, False])
def test_model_config_reaches_the_built_model(pretrained, tmp_path, tiny_model, demo_detection):
    recipe = detection_recipe(demo_detection, tiny_model("detection", "detr"), tmp_path)
    recipe["model"].update(pretrained=pretrained, config={"num_queries": 7, "giou_loss_coefficient": 5})
    engine = Engine(load_recipe(recipe), tracker=None, progress=False)
    model = engine.accelerator.unwrap_model(engine.model)
    assert model.config.num_queries == 7 and model.config.giou_loss_coefficient == 5
    # (num_queries, d_model): the architecture was built with the new value, not just relabelled.
    assert model.model.query_position_embeddings.weight.shape[0] == 7


def test_model_config_as_a_command_line_override(tmp_path, tiny_model, demo_detection):
    recipe = load_recipe(detection_recipe(demo_detection, tiny_model("detection", "detr"), tmp_path), ["model.config.num_queries=9"])
    assert recipe.model.config == {"num_queries": 9}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"num_querys": 7}, r"model.config.num_querys: model '.*' \(detr\) has no config attribute 'num_querys'; did you mean 'num_queries'\?"),
        ({"mask_loss_coefficient": 0.5}, r"model.config.mask_loss_coefficient = 0.5 is refused by DetrConfig: .*expected int, got float"),
        ({"num_labels": 3}, r"model.config.num_labels: the classes come from the data set's categories"),
    ],
)
def test_a_wrong_model_config_is_one_line_before_anything_is_written(config, message, tmp_path, tiny_model, demo_detection):
    recipe = detection_recipe(demo_detection, tiny_model("detection", "detr"), tmp_path / "runs")
    recipe["model"]["config"] = config
    path = tmp_path / "recipe.toml"
    path.write_text(tomli_w.dumps(recipe))
    result = run_module("cvengine.run", path, "--no-progress", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.strip().splitlines() if "Traceback" in line or line.startswith("error")]
    assert len(errors) == 1 and re.search(message, errors[0]), result.stderr
    assert not (tmp_path / "runs").exists()


def test_frozen_parameters_keep_their_weights_and_the_rest_train(tmp_path, tiny_model, demo_detection):
    folder = tiny_model("detection", "detr")
    initial = load_file(f"{folder}/model.safetensors")
    recipe = detection_recipe(demo_detection, folder, tmp_path, max_epochs=1, freeze=["model.backbone.", "model.encoder."])
    engine = Engine(load_recipe(recipe), tracker=None, progress=False)
    engine.fit()
    trained = load_file(Path(engine.run_dir) / "model" / "model.safetensors")
    frozen = [k for k in initial if k.startswith(("model.backbone.", "model.encoder."))]
    free = [k for k in initial if k.startswith(("model.decoder.", "class_labels_classifier.", "bbox_predictor."))]
    assert frozen and free
    for key in frozen:
        assert torch.equal(trained[key], initial[key]), key
    changed = [k for k in free if not torch.equal(trained[k], initial[k])]
    assert len(changed) > 0.9 * len(free), (len(changed), len(free))
    optimized = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
    model = engine.accelerator.unwrap_model(engine.model)
    assert all((id(p) in optimized) == p.requires_grad for p in model.parameters())
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("model.backbone."))


@pytest.mark.parametrize(
    "freeze, message",
    [
        (["detr."], r"train.freeze: 'detr.' matches no parameter of model '.*'; its parameter names start with bbox_predictor., class_labels_classifier., model."),
        ([""], r"train.freeze = \[''\] freezes every parameter"),
    ],
)
def test_a_freeze_that_matches_nothing_or_everything_is_refused(freeze, message, tmp_path, tiny_model, demo_detection):
    recipe = detection_recipe(demo_detection, tiny_model("detection", "detr"), tmp_path / "runs", freeze=freeze)
    with pytest.raises(RecipeError, match=message):
        Engine(load_recipe(recipe), tracker=None, progress=False)
    assert not (tmp_path / "runs").exists()
