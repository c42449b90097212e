"""Fault injection: the training process is SIGKILLed at each step of the checkpoint and `model/`
writes (a deterministic point, `CVENGINE_KILL_AT`), then resumed; the final weights must equal an
uninterrupted run's bitwise and `model/` must be `checkpoints/best`."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, detection_recipe
from cvengine import Engine, load_recipe
from cvengine.engine.checkpoint import KILL_AT_ENV
from test_divergence import assert_model_is_best

EPOCHS = 2  # 4 optimizer steps each; val/loss improves at both epochs, so both write best and model/


def _recipe(demo, model, output: Path, **train):
    data = detection_recipe(demo, model, output, max_epochs=EPOCHS, monitor="val/loss", **train)
    data["augment"] = {"enabled": True}  # seeded per sample: identical across resumes
    data["tracking"]["run_name"] = "run"
    return load_recipe(data)


def _fit(recipe) -> None:
    Engine(recipe, tracker=None, progress=False).fit()


def _fit_killed_at(recipe, point: str) -> int:
    """Train in a forked process that SIGKILLs itself at `point`; its exit code (-9 when killed)."""
    def target():
        os.environ[KILL_AT_ENV] = point
        _fit(recipe)

    process = multiprocessing.get_context("fork").Process(target=target)
    process.start()
    process.join(120)
    return process.exitcode


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, demo_detection) -> dict:
    """Final weights of the uninterrupted run."""
    output = tmp_path_factory.mktemp("reference")
    _fit(_recipe(demo_detection, tiny_model("detection", "detr"), output))
    return load_file(output / "tests" / "run" / "checkpoints" / "last" / "model.safetensors")


def _assert_finished_like(reference: dict, run_dir: Path) -> None:
    final = load_file(run_dir / "checkpoints" / "last" / "model.safetensors")
    assert final.keys() == reference.keys()
    for key in final:
        assert torch.equal(final[key], reference[key]), key
    assert_model_is_best(run_dir)
    leftovers = {p.name for p in (run_dir / "checkpoints").iterdir()} - {"best", "last"}
    assert not leftovers and not (run_dir / ".model.saving").exists() and not (run_dir / "model.old").exists(), leftovers


# Points of a checkpoint write, in order; "@2" is the second save (epoch 2), when a good copy of every
# folder exists; "@1" the first save, when none does.
POINTS = [
    "checkpoint.files-written@1",  # first checkpoint torn: restart cleanly
    "checkpoint.saved@1",  # first checkpoint complete in .saving, nothing swapped in
    "checkpoint.files-written@2",
    "checkpoint.saved@2",
    "best.copied@2",
    "best.between-renames@2",
    "best.before-cleanup@2",
    "last.between-renames@2",
    "last.before-cleanup@2",
    "model.written@2",  # best and last are epoch 2, model/ still epoch 1
    "model.between-renames@2",  # model/ missing
]


@pytest.mark.parametrize("point", POINTS)
def test_kill_then_resume_equals_uninterrupted(point, tmp_path, reference, tiny_model, demo_detection):
    model = tiny_model("detection", "detr")
    assert _fit_killed_at(_recipe(demo_detection, model, tmp_path), point) == -signal.SIGKILL
    _fit(_recipe(demo_detection, model, tmp_path, resume="last"))
    _assert_finished_like(reference, tmp_path / "tests" / "run")


def test_double_fault(tmp_path, reference, tiny_model, demo_detection):
    """Killed between the two renames of `last` (only `last.old` and the complete `.saving` are good),
    then killed again at the same point while the resume swaps `.saving` in: the good copies survive
    both and the run still ends bitwise equal."""
    model = tiny_model("detection", "detr")
    assert _fit_killed_at(_recipe(demo_detection, model, tmp_path), "last.between-renames@2") == -signal.SIGKILL
    checkpoints = tmp_path / "tests" / "run" / "checkpoints"
    assert not (checkpoints / "last").exists() and (checkpoints / "last.old").exists()
    assert _fit_killed_at(_recipe(demo_detection, model, tmp_path, resume="last"), "last.between-renames@1") == -signal.SIGKILL
    assert not (checkpoints / "last").exists() and (checkpoints / "last.old" / "train_state.json").exists()
    _fit(_recipe(demo_detection, model, tmp_path, resume="last"))
    _assert_finished_like(reference, tmp_path / "tests" / "run")


def test_restart_under_the_same_name_after_a_kill_before_any_checkpoint(tmp_path, reference, tiny_model, demo_detection):
    model = tiny_model("detection", "detr")
    assert _fit_killed_at(_recipe(demo_detection, model, tmp_path), "checkpoint.files-written@1") == -signal.SIGKILL
    _fit(_recipe(demo_detection, model, tmp_path))  # no resume: the dead folder is taken over
    _assert_finished_like(reference, tmp_path / "tests" / "run")


_SWAP = """
import sys
from pathlib import Path
from cvengine.engine.checkpoint import replace_dir
root = Path(sys.argv[1])
replace_dir(root / "new", root / "dst")
"""


def test_replace_dir_never_deletes_the_only_good_copy(tmp_path):
    """A crash between the renames left only `dst.old`; the next swap is killed again between its
    renames: `dst.old` must still be there, and a complete swap replaces it."""
    (tmp_path / "dst.old").mkdir()
    (tmp_path / "dst.old" / "weights").write_text("good")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "weights").write_text("newer")
    env = {**os.environ, "PYTHONPATH": str(REPO), KILL_AT_ENV: "dst.between-renames"}
    killed = subprocess.run([sys.executable, "-c", _SWAP, str(tmp_path)], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "dst.old" / "weights").read_text() == "good"
    env.pop(KILL_AT_ENV)
    subprocess.run([sys.executable, "-c", _SWAP, str(tmp_path)], env=env, check=True)
    assert (tmp_path / "dst" / "weights").read_text() == "newer" and not (tmp_path / "dst.old").exists()
