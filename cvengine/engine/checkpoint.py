"""Run folders, checkpoints and the exported model folder.

Run folder: `<train.output_dir>/<tracking.experiment>/<run name>/` with `recipe.toml` (the resolved
recipe), `checkpoints/{best,last}/`, `model/` and `metrics.json`.

Checkpoints are a hook: `last` after every evaluated epoch, `best` when the monitored metric
improves, both written to a temporary folder first and swapped in, so that a crash never leaves a
torn checkpoint. A checkpoint is Accelerate's `save_state` folder: model, optimizer, scheduler, every
rank's RNG state, the sampler's epoch and our TrainState counters. Loading it resumes exactly where
it stopped.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import attrs

from cvengine.engine.hooks import Callback
from cvengine.errors import CvengineError, RecipeError

log = logging.getLogger("cvengine")

MODEL_METADATA = "cvengine.json"
# Checkpoint sub-folder of the tensors of stateful hooks (EMA's average, ...), one file per hook class.
CALLBACKS_DIR = "callbacks"


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing an older `dst` without a moment where
    neither exists on disk (the old one is kept as `dst.old` until the new one is in place)."""
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)


def checkpoint_dir(path: Path) -> Path:
    """`path`, or its `.old` twin if a swap was interrupted between its two renames."""
    path = Path(path)
    if not path.exists() and path.with_name(path.name + ".old").exists():
        return path.with_name(path.name + ".old")
    return path


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# The run folder


def find_run_dir(recipe, model_family: str) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume from or None) for a recipe: a new folder (never another
    run's), or with train.resume the run it continues."""
    train, tracking = recipe.train, recipe.tracking
    root = Path(train.output_dir).resolve() / tracking.experiment
    if train.resume == "last":
        if tracking.run_name:
            candidates = [root / tracking.run_name]
        else:
            candidates = sorted((d for d in root.glob("*") if checkpoint_dir(d / "checkpoints" / "last").exists()), key=lambda d: d.stat().st_mtime)
        last = checkpoint_dir(candidates[-1] / "checkpoints" / "last") if candidates else None
        if last is None or not last.exists():
            raise RecipeError(f"train.resume = 'last': no checkpoints/last under {root / (tracking.run_name or '*')}; train without resume first")
        return candidates[-1], last
    if train.resume:
        path = Path(train.resume).resolve()
        if not path.is_dir() or not any(path.glob("random_states_*.pkl")):
            raise RecipeError(f"train.resume = '{train.resume}': not a checkpoint folder (expected RUN/checkpoints/last or best)")
        return (path.parent.parent if path.parent.name == "checkpoints" else root / path.name), path
    name = tracking.run_name or f"{model_family}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = root / name
    if run_dir.exists() and any(run_dir.iterdir()):
        if tracking.run_name:
            raise RecipeError(f"run folder {run_dir} already exists; choose another tracking.run_name, or set train.resume = 'last' to continue it")
        suffix = 1
        while (root / f"{name}-{suffix}").exists():
            suffix += 1
        run_dir = root / f"{name}-{suffix}"
    return run_dir, None


def resolve_run_dir(accelerator, recipe, model_family: str, run_dir=None) -> tuple[Path, Path | None]:
    """The run folder on every rank: chosen by the main process, broadcast to the others."""
    from accelerate.utils import broadcast_object_list

    if run_dir is not None:
        return Path(run_dir).resolve(), None
    answer = [None]
    if accelerator.is_main_process:
        answer = [find_run_dir(recipe, model_family)]
    broadcast_object_list(answer)
    return answer[0]


def resolved_recipe(recipe, run_dir: Path):
    """The recipe as run: absolute paths and the actual run name, so it re-runs from anywhere."""
    r = recipe
    splits = {}
    for split in ("train", "val", "test"):
        section = getattr(r.data, split)
        if section is not None:
            splits[split] = attrs.evolve(section, images=r.resolve_path(section.images), annotations=r.resolve_path(section.annotations) if section.annotations else None)
            if section.masks:
                splits[split] = attrs.evolve(splits[split], masks=r.resolve_path(section.masks))
    if isinstance(r.data.labels, str):
        splits["labels"] = r.resolve_path(r.data.labels)
    data = attrs.evolve(r.data, root=None, **splits)
    train = attrs.evolve(r.train, output_dir=str(Path(r.train.output_dir).resolve()), resume=None)
    tracking = attrs.evolve(r.tracking, run_name=Path(run_dir).name)
    return attrs.evolve(r, data=data, train=train, tracking=tracking)


# ----------------------------------------------------------------------------------------------------
# The model folder (`model/`): what AutoModelFor….from_pretrained and cvengine's Predictor load


def model_metadata(engine) -> dict:
    """What inference needs beyond config.json: the task, the family, and the label map (the way
    back from contiguous labels to the data set's category ids), saved as cvengine.json."""
    return {"task": engine.recipe.task, "model_family": engine.model_family, **engine.label_map.to_metadata()}


def save_model(engine, path) -> None:
    """`path/` loadable with AutoModelFor….from_pretrained and AutoImageProcessor.from_pretrained,
    written beside it first and swapped in."""
    acc = engine.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.saving")
        # A hook that keeps other weights for inference (EMA) gives them; else the model's own.
        exported = next((h.export_state_dict() for h in engine.hooks if hasattr(h, "export_state_dict")), None)
        acc.unwrap_model(engine.model).save_pretrained(tmp, state_dict=exported)
        engine.adapter.save(tmp)
        write_json(tmp / MODEL_METADATA, model_metadata(engine))
        replace_dir(tmp, path)
    acc.wait_for_everyone()


def load_weights(engine, checkpoint) -> None:
    """Model weights from a checkpoint folder (`checkpoints/best`, `last`) or an exported `model/`."""
    import torch
    from safetensors.torch import load_file

    path = checkpoint_dir(Path(checkpoint))
    files = [path / "model.safetensors", path / "pytorch_model.bin"]
    found = next((f for f in files if f.exists()), None)
    if found is None:
        raise CvengineError(f"{path}: no model.safetensors or pytorch_model.bin in this checkpoint folder")
    weights = load_file(str(found)) if found.suffix == ".safetensors" else torch.load(found, map_location="cpu", weights_only=True)
    averaged = path / CALLBACKS_DIR / "EMA.safetensors"
    if averaged.exists():
        # A run trained with EMA is evaluated and exported on the average, not the raw weights.
        weights = {k[len("averaged."):]: v for k, v in load_file(str(averaged)).items() if k.startswith("averaged.")}
    model = engine.accelerator.unwrap_model(engine.model)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied weights are stored once; anything else missing means the checkpoint is of another model.
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {}) | set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if unexpected or len(missing) > 0.5 * len(weights):
        raise CvengineError(f"{found} does not match model '{engine.recipe.model.name}': {len(missing)} missing, {len(unexpected)} unexpected keys")


# ----------------------------------------------------------------------------------------------------
# The hook


def _stateful_hooks(engine) -> list:
    return [h for h in engine.hooks if hasattr(h, "checkpoint_tensors") and hasattr(h, "load_checkpoint_tensors")]


def save_callback_tensors(engine, folder) -> None:
    """`folder/callbacks/<ClassName>.safetensors` for every hook with checkpoint_tensors() (main process)."""
    from safetensors.torch import save_file

    if not engine.accelerator.is_main_process:
        return
    for hook in _stateful_hooks(engine):
        target = Path(folder) / CALLBACKS_DIR / f"{type(hook).__name__}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in hook.checkpoint_tensors().items()}, str(target))


def load_callback_tensors(engine, folder) -> None:
    """Hand every hook with load_checkpoint_tensors() its tensors saved in `folder`, on the model's device."""
    from safetensors.torch import load_file

    for hook in _stateful_hooks(engine):
        source = Path(folder) / CALLBACKS_DIR / f"{type(hook).__name__}.safetensors"
        if not source.exists():
            raise CvengineError(f"{folder}: no {CALLBACKS_DIR}/{source.name} for the {type(hook).__name__} hook of this run; resume with the recipe the checkpoint was written with")
        hook.load_checkpoint_tensors(load_file(str(source), device=str(engine.accelerator.device)))


class CheckpointHook(Callback):
    def __init__(self, save_best: bool = True, save_last: bool = True):
        self.save_best = save_best
        self.save_last = save_last

    def on_fit_start(self, engine, state):
        if engine.resume_from is not None:
            engine.accelerator.load_state(str(engine.resume_from))
            load_callback_tensors(engine, engine.resume_from)
            state.should_stop = False
            state.status = "RUNNING"
            log.info(f"resumed from {engine.resume_from} at epoch {state.epoch}, step {state.global_step}")

    def on_epoch_end(self, engine, state):
        if not state.evaluated:
            return
        acc = engine.accelerator
        root = Path(engine.run_dir) / "checkpoints"
        tmp = root / ".saving"
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        save_callback_tensors(engine, tmp)
        acc.wait_for_everyone()
        if acc.is_main_process:
            if self.save_best and state.improved:
                best_tmp = root / ".saving-best"
                if best_tmp.exists():
                    shutil.rmtree(best_tmp)
                shutil.copytree(tmp, best_tmp)
                replace_dir(best_tmp, root / "best")
            if self.save_last:
                replace_dir(tmp, root / "last")
            else:
                shutil.rmtree(tmp)
        if self.save_best and state.improved:
            save_model(engine, Path(engine.run_dir) / "model")
        acc.wait_for_everyone()
