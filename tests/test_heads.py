"""What a model's head and backbone get when training starts: the backbone's learning rate for every
family (each adapter names its backbone), and a pretrained head kept by class name, re-initialised
with a message, or refused for evaluation while it is random."""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from cvengine.adapters import FAMILIES, load_model
from cvengine.engine.optim import build_optimizer
from cvengine.errors import RecipeError
from cvengine.recipe import TrainSection


def _family_id(family) -> str:
    return f"{family.task}-{family.model_type}"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.model_type != "timm_wrapper"], ids=_family_id)
def test_every_family_names_a_backbone_and_it_learns_at_the_backbone_rate(family, tiny_model):
    loaded = load_model(tiny_model(family.task, family.model_type), True, family.task, [str(i) for i in range(10)])
    adapter = family.adapter(loaded.model, loaded.processor)
    names = adapter.backbone_parameter_names(loaded.model)
    every = {n for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert names and names < every, "the backbone is a proper, non-empty part of the model"
    optimizer = build_optimizer(loaded.model, TrainSection(lr=1e-3, backbone_lr_mult=0.1), names)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(loaded.model.named_parameters())
    assert all(lr_of[id(params[n])] == pytest.approx(1e-4) for n in names)
    assert all(lr_of[id(params[n])] == pytest.approx(1e-3) for n in every - names)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.model_type != "timm_wrapper"], ids=_family_id)
def test_every_family_is_written_by_the_checkpoint_writer(family, tiny_model, tmp_path):
    """Once its adapter is built, the model saves to model.safetensors as checkpoints do (safetensors
    refuses parameters that share storage in part) and loads back equal."""
    from safetensors.torch import load_model as load_weights
    from safetensors.torch import save_model

    loaded = load_model(tiny_model(family.task, family.model_type), True, family.task, [str(i) for i in range(10)])
    family.adapter(loaded.model, loaded.processor)
    save_model(loaded.model, str(tmp_path / "model.safetensors"))
    expected = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.zero_()
    load_weights(loaded.model, str(tmp_path / "model.safetensors"))
    assert all(torch.equal(v, expected[k]) for k, v in loaded.model.state_dict().items())


def test_backbone_lr_mult_without_a_backbone_is_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(RecipeError, match="train.backbone_lr_mult"):
        build_optimizer(model, TrainSection(backbone_lr_mult=0.1), backbone_names=set(), model_name="two-layers")
    assert build_optimizer(model, TrainSection(backbone_lr_mult=None), backbone_names=set())  # not set: fine


@pytest.fixture(scope="module")
def named_checkpoints(tmp_path_factory):
    """Tiny DETR, RT-DETR and ViT checkpoints whose heads know the classes cat, dog, bird, fish."""
    import transformers as T

    from cvengine.adapters import ADAPTERS

    root = tmp_path_factory.mktemp("named_heads")
    names = ["cat", "dog", "bird", "fish"]
    folders = {}
    for task, family in (("detection", "detr"), ("detection", "rt_detr"), ("classification", "vit")):
        entry = ADAPTERS[task][family]
        config, processor = entry.tiny()
        config.num_labels = len(names)
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
        torch.manual_seed(0)
        model = getattr(T, entry.adapter.auto_model).from_config(config)
        folders[family] = root / family
        model.save_pretrained(folders[family])
        processor.save_pretrained(folders[family])
    return folders, names


def _head_tensors(folder, loaded_state, keys):
    saved = load_file(str(folder / "model.safetensors"))
    return {k: (saved[k], loaded_state[k]) for k in keys}


@pytest.mark.parametrize("family, task", [("detr", "detection"), ("rt_detr", "detection"), ("vit", "classification")])
def test_head_rows_are_kept_by_class_name(family, task, named_checkpoints, caplog):
    folders, names = named_checkpoints
    classes = ["bird", "Cat "]  # a subset, in another order, spelled loosely
    with caplog.at_level(logging.INFO, logger="cvengine"):
        loaded = load_model(str(folders[family]), True, task, classes)
    assert loaded.reinitialised == []
    assert "head kept" in caplog.text
    saved = load_file(str(folders[family] / "model.safetensors"))
    state = loaded.model.state_dict()
    resized = [k for k in saved if k in state and saved[k].shape != state[k].shape]
    assert resized, "the head tensors changed size"
    for key in resized:
        d = next(i for i, (a, b) in enumerate(zip(saved[key].shape, state[key].shape)) if a != b)
        extra = saved[key].shape[d] - len(names)
        rows = [names.index("bird"), names.index("cat")] + [len(names) + j for j in range(extra)]
        torch.testing.assert_close(state[key], saved[key].index_select(d, torch.tensor(rows)), rtol=0, atol=0)


def test_same_classes_in_another_order_permute_the_head(named_checkpoints):
    folders, names = named_checkpoints
    loaded = load_model(str(folders["vit"]), True, "classification", names[::-1])
    saved = load_file(str(folders["vit"] / "model.safetensors"))
    torch.testing.assert_close(loaded.model.classifier.weight, saved["classifier.weight"].flip(0), rtol=0, atol=0)
    assert loaded.reinitialised == []


@pytest.mark.parametrize("classes", [["car", "bus"], ["car", "bus", "van", "tram"]], ids=["other-count", "same-count"])
def test_unknown_classes_reinitialise_the_head_with_a_line_and_evaluation_refuses_it(classes, named_checkpoints, caplog):
    folders, _ = named_checkpoints
    with caplog.at_level(logging.WARNING, logger="cvengine"):
        loaded = load_model(str(folders["vit"]), True, "classification", classes)
    assert loaded.reinitialised == ["classifier.bias", "classifier.weight"]
    lines = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert len(lines) == 1 and "classifier.weight" in lines[0]
    saved = load_file(str(folders["vit"] / "model.safetensors"))
    if len(classes) == 4:
        assert not torch.equal(loaded.model.classifier.weight, saved["classifier.weight"])
    # The rest of the model is the checkpoint's.
    torch.testing.assert_close(loaded.model.vit.embeddings.patch_embeddings.projection.weight, saved["vit.embeddings.patch_embeddings.projection.weight"], rtol=0, atol=0)


def test_engine_refuses_to_evaluate_a_random_head_until_trained(named_checkpoints, tmp_path):
    from PIL import Image

    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    folders, _ = named_checkpoints
    for cls in ("car", "bus"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (40, 30), (40 * k, 200 if cls == "car" else 20, 90)).save(tmp_path / "images" / cls / f"{k}.png")
    recipe = load_recipe({
        "task": "classification", "model": {"name": str(folders["vit"])},
        "data": {"batch_size": 2, "num_workers": 0, "train": {"images": str(tmp_path / "images")}, "val": {"images": str(tmp_path / "images")}},
        "train": {"max_epochs": 1, "output_dir": str(tmp_path / "runs")},
    })
    engine = Engine(recipe, checkpoint=None, tracker=None, progress=False)
    with pytest.raises(RecipeError, match="initialised at random"):
        engine.evaluate("val")
    engine.fit()
    assert engine.evaluate("val")["val/num_images"] == 4
