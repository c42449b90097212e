"""A model.name that can only be a folder, and is missing, fails at once with "no such folder"."""
from __future__ import annotations

import time

import pytest

from conftest import run_module


@pytest.mark.parametrize("name", ["./demo/tiny-rt_detr", "../models/x", "runs/demo/run-1/model", "/nonexistent/model"])
def test_missing_local_model_name_says_no_such_folder(name, tmp_path):
    from cvengine.adapters.loading import load_config
    from cvengine.errors import RecipeError

    with pytest.raises(RecipeError, match="no such folder"):
        load_config(name)


def test_hub_ids_are_not_taken_for_paths():
    from cvengine.adapters.loading import looks_like_path

    assert not any(looks_like_path(n) for n in ("PekingU/rtdetr_r50vd", "facebook/detr-resnet-50", "bert-base-uncased"))


def test_run_with_a_missing_model_folder_is_one_line(demo_detection, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'task = "detection"\n[model]\nname = "./demo/tiny-rt_detr"\n'
        f'[data]\nroot = "{demo_detection}"\ntrain = {{images = "train/images", annotations = "train/annotations.json"}}\n'
        f'[train]\noutput_dir = "{tmp_path / "runs"}"\n'
    )
    started = time.perf_counter()
    # Hub access allowed: the error must come before any attempt to reach it.
    result = run_module("cvengine.run", recipe, cwd=tmp_path, env={"HF_HUB_OFFLINE": "0"})
    assert result.returncode == 2 and "no such folder" in result.stderr and "Traceback" not in result.stderr, result.stderr[-1000:]
    assert time.perf_counter() - started < 60
