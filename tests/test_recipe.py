"""Typed TOML recipes: types, typos with suggestions, overrides, the resolved recipe round trip."""
from __future__ import annotations

import json
import os

import pytest

from cvengine.errors import RecipeError
from cvengine.recipe import dump_recipe, flatten, load_recipe, recipe_to_dict

BASE = {"task": "detection", "model": {"name": "some/model"}}


def test_defaults_and_overrides_with_types(tmp_path):
    recipe = load_recipe(BASE, ["train.max_epochs=3", "train.lr=3e-4", "train.resume=last", "data.train={images='a', annotations='b.json'}", "train.compile=true"])
    assert recipe.train.max_epochs == 3 and recipe.train.lr == pytest.approx(3e-4)
    assert recipe.train.resume == "last" and recipe.train.compile is True
    assert recipe.data.train.images == os.path.abspath("a") and recipe.data.train.annotations == os.path.abspath("b.json")
    assert recipe.train.precision == "auto" and recipe.tracking.experiment == "cvengine"
    # an int is a valid float
    assert load_recipe(BASE, ["train.lr=1"]).train.lr == 1.0


def test_overrides_leave_the_callers_dict_as_given():
    given = {"task": "detection", "model": {"name": "some/model"}, "train": {"lr": 1e-3}}
    first = load_recipe(given, ["model.name=other/model", "train.lr=5e-4", "train.scheduler.name=linear"])
    second = load_recipe(given)
    assert given == {"task": "detection", "model": {"name": "some/model"}, "train": {"lr": 1e-3}}
    assert (first.model.name, first.train.lr, first.train.scheduler.name) == ("other/model", 5e-4, "linear")
    assert (second.model.name, second.train.lr, second.train.scheduler.name) == ("some/model", 1e-3, "cosine")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_epoch=3", "unknown key 'train.max_epoch' in override 'train.max_epoch=3'; did you mean 'train.max_epochs'?"),
        ("trian.lr=1", "unknown key 'trian.lr'"),
        ("train.lr=fast", "'train.lr' in override 'train.lr=fast' must be float; got 'fast'"),
        ("train.max_epochs=2.5", "'train.max_epochs' in override 'train.max_epochs=2.5' must be int"),
        ("train.precision=fp8", "'precision' must be one of auto, fp32, fp16, bf16"),
        ("task=segmentation", "'task' must be one of detection"),
        ("train.max_epochs=0", "'max_epochs' must be > 0"),
        ("train", "must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(BASE, [override])
    assert message in str(err.value)


def test_typo_in_file_names_the_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('task = "detection"\n[model]\nname = "x"\n[train]\nmax_epoch = 3\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"unknown key 'train.max_epoch' in {path}; did you mean 'train.max_epochs'?"


def test_invalid_toml_and_missing_file(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("task = \n")
    with pytest.raises(RecipeError, match=f"{path} is not valid TOML"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(RecipeError, match="missing key 'model'"):
        load_recipe({"task": "detection"})


def test_toml_1_1_syntax_is_accepted(tmp_path):
    # tomli parses TOML 1.1 (multi-line inline tables), which Python 3.11's tomllib rejects.
    path = tmp_path / "r.toml"
    path.write_text('task = "detection"\nmodel = {\n  name = "x",\n  pretrained = false,\n}\n')
    assert load_recipe(path).model.pretrained is False


def test_dump_round_trips(tmp_path):
    recipe = load_recipe(BASE, ["train.max_epochs=7", "augment.transforms=[{name='HorizontalFlip', p=0.5}]"])
    path = tmp_path / "resolved.toml"
    path.write_text(dump_recipe(recipe))
    again = load_recipe(path)
    assert recipe_to_dict(again) == recipe_to_dict(recipe)
    flat = flatten(recipe_to_dict(recipe))
    assert flat["train.max_epochs"] == 7 and flat["model.name"] == "some/model"


def test_paths_resolve_under_data_root(tmp_path):
    recipe = load_recipe(BASE, [f"data.root='{tmp_path}'"])
    assert recipe.resolve_path("train/images") == str(tmp_path / "train" / "images")
    assert recipe.resolve_path("/Volumes/cat/schema/vol/images") == "/Volumes/cat/schema/vol/images"


def test_recipe_file_paths_resolve_against_its_folder_and_overrides_against_the_cwd(tmp_path, monkeypatch, demo_detection):
    """A recipe and its data travel together: run from another folder it still finds them; a path
    typed on the command line is the user's shell's, relative to the current folder."""
    import shutil

    from cvengine.tasks import get_task

    project = tmp_path / "project"
    shutil.copytree(demo_detection, project / "data")
    (project / "models" / "m").mkdir(parents=True)
    (project / "recipes").mkdir()
    path = project / "recipes" / "r.toml"
    path.write_text(
        'task = "detection"\n[model]\nname = "../models/m"\n'
        '[data]\nroot = "../data"\ntrain = {images = "train/images", annotations = "train/annotations.json"}\n'
        '[train]\noutput_dir = "../runs"\nresume = "../runs/x/r1/checkpoints/last"\n[tracking]\nuri = "sqlite:///../runs/mlflow.db"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    recipe = load_recipe(path)
    assert recipe.data.root == str(project / "data") and recipe.model.name == str(project / "models" / "m")
    assert recipe.train.output_dir == str(project / "runs") and recipe.train.resume == str(project / "runs" / "x" / "r1" / "checkpoints" / "last")
    assert recipe.tracking.uri == f"sqlite:///{project / 'runs' / 'mlflow.db'}"
    # The loader finds the data: the same 16 images and boxes as the file beside the recipe.
    index = get_task("detection").load_index(recipe, "train")
    expected = json.loads((project / "data" / "train" / "annotations.json").read_text())
    assert len(index) == len(expected["images"]) == 16

    # Overrides: relative to the current folder; split paths still under data.root.
    shutil.copytree(demo_detection, elsewhere / "mine")
    typed = load_recipe(path, ["data.root=mine", "train.output_dir=out", "model.name=./m2", "tracking.uri='sqlite:///db/m.db'"])
    assert typed.data.root == str(elsewhere / "mine") and typed.train.output_dir == str(elsewhere / "out")
    assert typed.model.name == str(elsewhere / "m2") and typed.tracking.uri == f"sqlite:///{elsewhere / 'db' / 'm.db'}"
    assert typed.resolve_path(typed.data.train.annotations) == str(elsewhere / "mine" / "train" / "annotations.json")
    assert len(get_task("detection").load_index(typed, "train")) == 16
    # Without data.root, a split path of the file is the file's folder's, one typed the shell's; a dict's too.
    rootless = project / "recipes" / "rootless.toml"
    rootless.write_text('task = "detection"\n[model]\nname = "../models/m"\n[data.train]\nimages = "../data/train/images"\nannotations = "../data/train/annotations.json"\n')
    mixed = load_recipe(rootless, ["data.val={images='mine/val/images', annotations='mine/val/annotations.json'}"])
    assert mixed.data.train.images == str(project / "data" / "train" / "images")
    assert mixed.data.val.annotations == str(elsewhere / "mine" / "val" / "annotations.json")
    assert mixed.train.output_dir == str(elsewhere / "runs")  # not written in the file: the current folder's runs/
    as_dict = load_recipe({"task": "detection", "model": {"name": "m"}, "data": {"root": "mine"}})
    assert as_dict.data.root == str(elsewhere / "mine") and as_dict.model.name == "m"  # no folder m here: a hub id


def test_every_shipped_recipe_loads():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))
    assert len(recipes) >= 8
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.model.name and recipe.task
