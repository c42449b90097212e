"""train.scheduler: the learning rate of every optimizer step against torch's and transformers' own
schedulers (and the closed-form cosine), through the same build_scheduler the engine calls."""
from __future__ import annotations

import math

import pytest
import torch

from cvengine.engine.hooks import Callback
from cvengine.engine.optim import build_scheduler
from cvengine.errors import RecipeError
from cvengine.recipe import load_recipe

LR = 0.01


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=LR)


def _train(**keys):
    recipe = {"task": "detection", "model": {"name": "x"}, "data": {"root": "."}, "train": {"lr": LR, **keys}}
    return load_recipe(recipe).train


def _lrs(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_cosine_with_warmup_is_the_closed_form():
    train = _train(max_epochs=10, warmup_ratio=0.1)
    lrs = _lrs(build_scheduler(_optimizer(), train, total_steps=100, steps_per_epoch=10), 100)
    expected = [LR * s / 10 if s < 10 else LR * 0.5 * (1 + math.cos(math.pi * (s - 10) / 90)) for s in range(100)]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_cosine_floor_follows_min_lr_ratio():
    train = _train(max_epochs=5, scheduler={"name": "cosine", "min_lr_ratio": 0.05})
    lrs = _lrs(build_scheduler(_optimizer(), train, total_steps=50, steps_per_epoch=10), 51)
    expected = [LR * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, 50) / 50))) for s in range(51)]
    assert lrs == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name, reference", [("linear", "get_linear_schedule_with_warmup"), ("constant", "get_constant_schedule_with_warmup")])
def test_linear_and_constant_match_transformers(name, reference):
    import transformers

    train = _train(max_epochs=4, warmup_ratio=0.25, scheduler={"name": name})
    ours = _lrs(build_scheduler(_optimizer(), train, total_steps=40, steps_per_epoch=10), 40)
    args = (10, 40) if name == "linear" else (10,)
    theirs = _lrs(getattr(transformers, reference)(_optimizer(), *args), 40)
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours[10] == pytest.approx(LR) and ours[0] == 0.0


def test_multistep_decays_at_epoch_milestones_as_torch_multisteplr():
    steps_per_epoch = 7
    train = _train(max_epochs=12, scheduler={"name": "multistep", "milestones": [4, 9], "gamma": 0.5})
    ours = _lrs(build_scheduler(_optimizer(), train, total_steps=12 * steps_per_epoch, steps_per_epoch=steps_per_epoch), 12 * steps_per_epoch)
    # torch's MultiStepLR stepped once per epoch, as the reference repositories (RT-DETR, LW-DETR) step it.
    reference = torch.optim.lr_scheduler.MultiStepLR(_optimizer(), milestones=[4, 9], gamma=0.5)
    per_epoch = _lrs(reference, 12)
    assert ours == pytest.approx([lr for lr in per_epoch for _ in range(steps_per_epoch)], abs=1e-12)


def test_step_decays_every_step_size_epochs_as_torch_steplr():
    train = _train(max_epochs=10, scheduler={"name": "step", "step_size": 3, "gamma": 0.1})
    ours = _lrs(build_scheduler(_optimizer(), train, total_steps=20, steps_per_epoch=2), 20)
    per_epoch = _lrs(torch.optim.lr_scheduler.StepLR(_optimizer(), step_size=3, gamma=0.1), 10)
    assert ours == pytest.approx([lr for lr in per_epoch for _ in range(2)], rel=1e-9)


def test_step_schedule_with_warmup_ramps_then_decays():
    train = _train(max_epochs=4, warmup_ratio=0.25, scheduler={"name": "multistep", "milestones": [3]})
    lrs = _lrs(build_scheduler(_optimizer(), train, total_steps=40, steps_per_epoch=10), 40)
    assert lrs[:10] == pytest.approx([LR * s / 10 for s in range(10)])
    assert lrs[10:30] == pytest.approx([LR] * 20) and lrs[30:] == pytest.approx([LR * 0.1] * 10)


@pytest.mark.parametrize(
    "scheduler, message",
    [
        ({"name": "cosin"}, r"\[train.scheduler\] 'name' must be one of cosine"),
        ({"name": "step"}, r"\[train.scheduler\] name = 'step' needs step_size"),
        ({"name": "multistep"}, r"\[train.scheduler\] name = 'multistep' needs milestones"),
        ({"name": "multistep", "milestones": [5, 2]}, "increasing"),
        ({"nmae": "step"}, "did you mean 'train.scheduler.name'"),
    ],
)
def test_bad_scheduler_keys_name_the_key(scheduler, message):
    with pytest.raises(RecipeError, match=message):
        _train(scheduler=scheduler)


class LrRecorder(Callback):
    """The learning rate after every optimizer step (the scheduler has stepped: the next step's lr)."""

    def __init__(self):
        self.lrs = []

    def on_step_end(self, engine, state):
        self.lrs.append(engine.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize(
    "scheduler, decay_steps",
    [({"name": "step", "step_size": 1, "gamma": 0.5}, [4, 8, 12]), ({"name": "multistep", "milestones": [2], "gamma": 0.1}, [8])],
    ids=["step", "multistep"],
)
def test_resume_with_an_epoch_schedule_equals_uninterrupted(scheduler, decay_steps, tiny_model, demo_classification, tmp_path):
    """Stopped after epoch 1 and resumed with train.resume=last: the same learning rate at every later
    step and bitwise the same weights as the uninterrupted run (a scheduler rebuilt from step 0 on
    resume would restart the decays)."""
    from conftest import assert_same_tensors, fit_interrupted_and_resumed

    model = tiny_model("classification", "resnet")
    split = {"images": "train/images", "annotations": "train/annotations.json"}

    def recipe(run_name, **train):
        return load_recipe({
            "task": "classification",
            "model": {"name": model, "pretrained": True},
            "data": {"root": str(demo_classification), "batch_size": 4, "num_workers": 0, "train": split, "val": {"images": "val/images", "annotations": "val/annotations.json"}},
            "augment": {"enabled": False},
            "train": {"max_epochs": 3, "lr": 3e-3, "output_dir": str(tmp_path), "scheduler": scheduler, **train},
            "tracking": {"experiment": "tests", "run_name": run_name},
        })

    recorder = LrRecorder()
    state = fit_interrupted_and_resumed(recipe, callbacks=[recorder])
    assert state.epoch == 3 and state.global_step == 12  # 16 images, batch 4: 4 steps per epoch
    # Recorded: the full run's 12 steps, the stopped run's 4, the resumed run's last 8.
    full, stopped, resumed = recorder.lrs[:12], recorder.lrs[12:16], recorder.lrs[16:]
    assert full == pytest.approx([3e-3 * scheduler["gamma"] ** sum(step >= d for d in decay_steps) for step in range(1, 13)], rel=1e-12)
    assert stopped == full[:4] and resumed == full[4:]
    assert_same_tensors(tmp_path / "tests/full/checkpoints/last/model.safetensors", tmp_path / "tests/part/checkpoints/last/model.safetensors")
