"""train.resume=last continues a run with the run's own saved recipe.toml (its start-up overrides
included), not with the recipe file's current values; overrides that change it are named."""
from __future__ import annotations

import json

import pytest
import tomli_w

from conftest import detection_recipe, run_module


@pytest.mark.timeout(600)
def test_resume_last_uses_the_saved_recipe(tiny_model, demo_detection, tmp_path):
    recipe = detection_recipe(demo_detection, tiny_model("detection", "rt_detr"), tmp_path / "runs", max_epochs=3)
    recipe["tracking"]["run_name"] = "r"
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(tomli_w.dumps(recipe))
    history = lambda: [row["epoch"] for row in json.loads((tmp_path / "runs" / "tests" / "r" / "metrics.json").read_text())["history"]]  # noqa: E731

    first = run_module("cvengine.run", recipe_file, "train.max_epochs=1", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    # The run was started for 1 epoch: resuming it without that override trains nothing more
    # (the recipe file's max_epochs = 3 is not the run's).
    again = run_module("cvengine.run", recipe_file, "train.resume=last", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert history() == [1]
    assert "with its saved recipe.toml" in again.stderr + again.stdout and "changed by overrides" not in again.stderr + again.stdout
    # An override that changes the saved recipe is named, in one line, and applies.
    longer = run_module("cvengine.run", recipe_file, "train.resume=last", "train.max_epochs=2", "--no-progress", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr[-2000:]
    (line,) = [line for line in (longer.stdout + longer.stderr).splitlines() if "changed by overrides" in line]
    assert "train.max_epochs 1 -> 2" in line
    assert history() == [1, 2]
