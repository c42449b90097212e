"""Run folders, checkpoints and the exported model folder.

Run folder: `<train.output_dir>/<tracking.experiment>/<run name>/` with `recipe.toml` (the resolved
recipe), `checkpoints/{best,last}/`, `model/` and `metrics.json`.

Checkpoints are a hook: `last` after every evaluated epoch, `best` when the monitored metric
improves, both written to a temporary folder first and swapped in, so that a crash never leaves a
torn checkpoint. A checkpoint folder holds no pickle, so loading one runs no code:

    model.safetensors               the model's weights
    optimizer.pt, scheduler.pt      state dicts of tensors and numbers (torch.load(weights_only=True))
    scaler.pt                       the fp16 GradScaler's state, when there is one
    rng_state_<rank>.safetensors    every rank's Python, NumPy, torch CPU and CUDA generator states
    callbacks/<Class>.safetensors   what each callback with `checkpoint_tensors()` returns
    train_state.json                our counters (epoch, step, best metric, history); written last,
                                    so a folder with it is complete

The sampler needs no state of its own: it is seeded by (train.seed, epoch). Loading a checkpoint
resumes exactly where it stopped, bitwise.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import time
from pathlib import Path

import attrs

from cvengine.engine.hooks import Callback
from cvengine.errors import CvengineError, RecipeError, TrainingDiverged

log = logging.getLogger("cvengine")

MODEL_METADATA = "cvengine.json"
TRAIN_STATE = "train_state.json"
CALLBACKS_DIR = "callbacks"
LOCK_FILE = ".lock"

# Test support: `CVENGINE_KILL_AT=<point>[@<n>]` makes the process SIGKILL itself the n-th time (default
# the first) it reaches the named point of a checkpoint or model-folder write. The fault-injection
# tests use it to crash at every step of a write deterministically.
KILL_AT_ENV = "CVENGINE_KILL_AT"
_points_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    wanted = os.environ.get(KILL_AT_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _points_reached[name] = _points_reached.get(name, 0) + 1
    if _points_reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing an older `dst` without a moment where
    neither exists on disk: the old one is kept as `dst.old` until the new one is in place. A `dst.old`
    left by a crash between the two renames is the only good copy while `dst` is missing: it is
    deleted only once `src` has taken `dst`'s place."""
    src, dst = Path(src), Path(dst)
    old = dst.with_name(dst.name + ".old")
    if old.exists() and dst.exists():
        shutil.rmtree(old)  # `dst` is complete (renames are atomic): `old` is a stale copy
    if dst.exists():
        os.replace(dst, old)
    kill_point(f"{dst.name}.between-renames")
    os.replace(src, dst)
    kill_point(f"{dst.name}.before-cleanup")
    if old.exists():
        shutil.rmtree(old)


def checkpoint_dir(path: Path) -> Path:
    """`path`, or its `.old` twin if a swap was interrupted between its two renames."""
    path = Path(path)
    if not path.exists() and path.with_name(path.name + ".old").exists():
        return path.with_name(path.name + ".old")
    return path


def write_text(path: Path, text: str) -> None:
    """Write `path` beside itself and rename it into place: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=float))


def read_train_state(folder: Path) -> dict | None:
    """The counters of a complete checkpoint folder, or None when `folder` is not one."""
    path = Path(folder) / TRAIN_STATE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CvengineError(f"{path}: unreadable checkpoint counters ({err}); resume from another checkpoint") from err


def _position(folder: Path) -> tuple[int, int]:
    """(epoch, optimizer step) a complete checkpoint folder was written at; (-1, -1) if incomplete."""
    data = read_train_state(folder) if Path(folder).is_dir() else None
    return (int(data["epoch"]), int(data["global_step"])) if data else (-1, -1)


# ----------------------------------------------------------------------------------------------------
# Checkpoint files: written and read without pickle


def _refuse_pickles(folder: Path) -> None:
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix in (".pkl", ".pickle", ".bin") and path.is_file():
            raise CvengineError(f"{path}: a pickle file in a checkpoint folder; cvengine does not load pickles (loading one can run any code). Resume from a checkpoint written by this version of cvengine")


def _torch_load(path: Path):
    """A state dict of tensors, numbers and strings; anything else (code) is refused."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CvengineError(f"{path}: not a checkpoint file cvengine can load safely ({first[:200]}); resume from another checkpoint") from err


def _safetensors_load(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        raise CvengineError(f"{path}: not a readable safetensors file ({str(err)[:200]}); resume from another checkpoint") from err


def rng_tensors() -> dict:
    """This process's generator states as tensors (Python's Mersenne Twister words, NumPy's, torch's
    CPU and CUDA byte states)."""
    import numpy as np
    import torch

    version, words, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {
        "python/words": torch.tensor(words, dtype=torch.int64),  # (625,) 32-bit words and the position
        "python/version_gauss": torch.tensor([version, 0.0 if gauss is None else 1.0, gauss or 0.0], dtype=torch.float64),
        "numpy/keys": torch.from_numpy(np_keys.astype(np.int64)),  # (624,) uint32 words
        "numpy/pos_has_gauss": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy/gauss": torch.tensor([np_gauss], dtype=torch.float64),
        "torch/cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch/cuda/{i}"] = state
    return tensors


def set_rng_tensors(tensors: dict) -> None:
    import numpy as np
    import torch

    version, has_gauss, gauss = tensors["python/version_gauss"].tolist()
    random.setstate((int(version), tuple(tensors["python/words"].tolist()), gauss if has_gauss else None))
    pos, np_has_gauss = tensors["numpy/pos_has_gauss"].tolist()
    np.random.set_state(("MT19937", tensors["numpy/keys"].numpy().astype(np.uint32), int(pos), int(np_has_gauss), float(tensors["numpy/gauss"][0])))
    torch.set_rng_state(tensors["torch/cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("torch/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def checkpointed_callbacks(engine) -> list:
    """The hooks that keep tensors in checkpoints: those defining `checkpoint_tensors()` (and
    `load_checkpoint_tensors(tensors)`), saved as `callbacks/<ClassName>.safetensors`."""
    return [h for h in engine.hooks if callable(getattr(h, "checkpoint_tensors", None))]


def weights_are_finite(model) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point())


def refuse_nonfinite_weights(engine, where: str) -> None:
    """Raise TrainingDiverged when the model's weights hold NaN or inf: they are never saved."""
    if not weights_are_finite(engine.accelerator.unwrap_model(engine.model)):
        raise TrainingDiverged(
            f"the model's weights became NaN or inf {where}: training stopped and nothing of it was saved "
            f"(the last good checkpoint, if any, is in {Path(engine.run_dir) / 'checkpoints'}); lower train.lr or set train.grad_clip"
        )


def save_checkpoint(engine, folder: Path) -> None:
    """Everything a resume needs, into `folder` (created here), on every rank; `train_state.json` is
    written last, after every rank has written its files."""
    import torch
    from safetensors.torch import save_file, save_model

    acc = engine.accelerator
    folder = Path(folder)
    refuse_nonfinite_weights(engine, f"by epoch {engine.state.epoch} (step {engine.state.global_step})")
    if acc.is_main_process:
        folder.mkdir(parents=True)
        save_model(acc.unwrap_model(engine.model), str(folder / "model.safetensors"))
        torch.save(engine.optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(engine.scheduler.state_dict(), folder / "scheduler.pt")
        if acc.scaler is not None:
            torch.save(acc.scaler.state_dict(), folder / "scaler.pt")
        for hook in checkpointed_callbacks(engine):
            (folder / CALLBACKS_DIR).mkdir(exist_ok=True)
            tensors = {k: v.detach().contiguous().cpu() for k, v in hook.checkpoint_tensors().items()}
            save_file(tensors, str(folder / CALLBACKS_DIR / f"{type(hook).__name__}.safetensors"))
    acc.wait_for_everyone()
    save_file(rng_tensors(), str(folder / f"rng_state_{acc.process_index}.safetensors"))
    acc.wait_for_everyone()
    if acc.is_main_process:
        kill_point("checkpoint.files-written")
        write_json(folder / TRAIN_STATE, engine.state.state_dict())
    acc.wait_for_everyone()


def load_checkpoint(engine, folder: Path) -> None:
    """Restore what `save_checkpoint` wrote, on every rank. Nothing in the folder is unpickled: a
    file that would need it is refused with its name."""
    from safetensors.torch import load_model

    acc = engine.accelerator
    folder = Path(folder)
    _refuse_pickles(folder)
    data = read_train_state(folder)
    if data is None:
        raise CvengineError(f"{folder}: no {TRAIN_STATE}, so not a complete checkpoint folder (expected RUN/checkpoints/last or best)")
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt"):
        if not (folder / name).is_file():
            raise CvengineError(f"{folder / name}: missing from the checkpoint folder; resume from another checkpoint")
    model = acc.unwrap_model(engine.model)
    try:
        missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False, device=str(acc.device))
    except Exception as err:
        raise CvengineError(f"{folder / 'model.safetensors'}: cannot be loaded into model '{engine.recipe.model.name}' ({str(err)[:200]})") from err
    if missing or unexpected:
        raise CvengineError(f"{folder / 'model.safetensors'} does not match model '{engine.recipe.model.name}': {len(missing)} missing, {len(unexpected)} unexpected keys")
    engine.optimizer.load_state_dict(_torch_load(folder / "optimizer.pt"))
    engine.scheduler.load_state_dict(_torch_load(folder / "scheduler.pt"))
    if acc.scaler is not None and (folder / "scaler.pt").is_file():
        acc.scaler.load_state_dict(_torch_load(folder / "scaler.pt"))
    for hook in checkpointed_callbacks(engine):
        path = folder / CALLBACKS_DIR / f"{type(hook).__name__}.safetensors"
        if path.is_file():
            hook.load_checkpoint_tensors({k: v.to(acc.device) for k, v in _safetensors_load(path).items()})
        else:
            log.warning(f"{path} is missing: {type(hook).__name__} starts afresh")
    rng = folder / f"rng_state_{acc.process_index}.safetensors"
    if rng.is_file():
        set_rng_tensors(_safetensors_load(rng))
    else:
        log.warning(f"{rng} is missing (the checkpoint was written by fewer processes): this rank's random streams start afresh")
    engine.state.load_state_dict(data)


def recover_checkpoints(root: Path) -> None:
    """Finish what a crash interrupted in `RUN/checkpoints`: a `.old` copy left between two renames
    takes its place back; a complete `.saving` newer than `last` becomes `last` (and `best`, if it
    was an improvement newer than `best`); incomplete temporary folders are removed. Main process."""
    root = Path(root)
    if not root.is_dir():
        return
    for name in ("best", "last"):
        dst, old = root / name, root / f"{name}.old"
        if old.exists() and not dst.exists():
            os.replace(old, dst)
        elif old.exists():
            shutil.rmtree(old)
    saving, saving_best = root / ".saving", root / ".saving-best"
    if saving_best.exists():
        if _position(saving_best) > _position(root / "best"):
            replace_dir(saving_best, root / "best")
        else:
            shutil.rmtree(saving_best)
    if saving.exists():
        data = read_train_state(saving)
        if data is not None and _position(saving) > _position(root / "last"):
            if data.get("improved") and _position(saving) > _position(root / "best"):
                shutil.copytree(saving, saving_best)
                replace_dir(saving_best, root / "best")
            replace_dir(saving, root / "last")
            log.info(f"recovered the checkpoint written before a crash: {root / 'last'} (epoch {data['epoch']})")
        else:
            shutil.rmtree(saving)


# ----------------------------------------------------------------------------------------------------
# The run folder


_held_locks: dict[Path, object] = {}


def lock_run_dir(run_dir: Path) -> bool:
    """Take the run folder's exclusive lock (held by this process until `release_run_dir` or its
    exit, even a SIGKILL); False when another training process holds it."""
    run_dir = Path(run_dir)
    if run_dir in _held_locks:
        return True
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: atomic folder creation only
        return True
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    _held_locks[run_dir] = handle
    return True


def release_run_dir(run_dir) -> None:
    handle = _held_locks.pop(Path(run_dir), None)
    if handle is not None:
        handle.close()


def run_dir_is_abandoned(run_dir: Path) -> bool:
    """Whether no live training process holds `run_dir` (this process holding it, before its own
    MLflow run starts, counts: whatever ran there before is dead)."""
    run_dir = Path(run_dir)
    if run_dir in _held_locks:
        return True
    if not lock_run_dir(run_dir):
        return False
    release_run_dir(run_dir)
    return True


def _has_results(run_dir: Path) -> bool:
    """Whether a run folder holds anything worth keeping: a checkpoint or the model (metrics.json is
    written before the first checkpoint and means nothing without it)."""
    ckpt = run_dir / "checkpoints"
    kept = [ckpt / "best", ckpt / "last", ckpt / "best.old", ckpt / "last.old", run_dir / "model"]
    return any(p.exists() for p in kept) or read_train_state(ckpt / ".saving") is not None


def _claim(run_dir: Path, named: bool) -> bool:
    """Create and lock `run_dir` for a new run. A folder that exists is taken over only when it was
    named by the user, nobody trains in it and it holds no results (a run killed before its first
    checkpoint): it restarts cleanly. False when an automatic name is taken (try the next one)."""
    try:
        os.mkdir(run_dir)
    except FileExistsError:
        if not named:
            return False
        if not run_dir.is_dir():
            raise RecipeError(f"run folder {run_dir} exists and is not a folder; choose another tracking.run_name") from None
        if not lock_run_dir(run_dir):
            raise RecipeError(f"run folder {run_dir} is in use by another training process; choose another tracking.run_name") from None
        if _has_results(run_dir):
            release_run_dir(run_dir)
            raise RecipeError(f"run folder {run_dir} already exists; choose another tracking.run_name, or set train.resume = 'last' to continue it") from None
        log.info(f"{run_dir} holds no checkpoint of the run that created it: training restarts there from the beginning")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return True
    if not lock_run_dir(run_dir):
        raise RecipeError(f"run folder {run_dir} is in use by another training process; choose another tracking.run_name")
    return True


def _check_run_name(name: str) -> None:
    if not name or name in (".", "..") or Path(name).is_absolute() or Path(name).name != name or "\\" in name:
        raise RecipeError(f"tracking.run_name = {name!r}: must be a plain folder name (no '/', '..' or absolute path): run folders stay inside train.output_dir")


def find_run_dir(recipe, model_family: str) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume from or None) for a recipe: a new folder (never another
    run's), or with train.resume the run it continues. The folder is created atomically and locked
    by this process, so two runs never share one. Checkpoint writes a crash interrupted are finished
    first (see `recover_checkpoints`)."""
    train, tracking = recipe.train, recipe.tracking
    if tracking.run_name is not None:
        _check_run_name(tracking.run_name)
    root = Path(train.output_dir).resolve() / tracking.experiment
    if train.resume == "last":
        if tracking.run_name:
            candidates = [root / tracking.run_name] if (root / tracking.run_name).is_dir() else []
        else:
            candidates = sorted((d for d in root.glob("*") if d.is_dir() and _has_results(d)), key=lambda d: d.stat().st_mtime)
        if not candidates:
            raise RecipeError(f"train.resume = 'last': no run folder with checkpoints under {root / (tracking.run_name or '*')}; train without resume first")
        run_dir = candidates[-1]
        if not lock_run_dir(run_dir):
            raise RecipeError(f"run folder {run_dir} is in use by another training process: it cannot be resumed while it trains")
        recover_checkpoints(run_dir / "checkpoints")
        last = run_dir / "checkpoints" / "last"
        if read_train_state(last) is None:
            log.info(f"{run_dir} holds no complete checkpoint (the run stopped during its first one): training restarts there from the beginning")
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            return run_dir, None
        return run_dir, last
    if train.resume:
        path = Path(train.resume).resolve()
        if read_train_state(checkpoint_dir(path)) is None:
            raise RecipeError(f"train.resume = '{train.resume}': not a checkpoint folder (expected RUN/checkpoints/last or best, holding {TRAIN_STATE})")
        if path.parent.name == "checkpoints" and (path.parent.parent / "recipe.toml").exists():
            run_dir = path.parent.parent
            if not lock_run_dir(run_dir):
                raise RecipeError(f"run folder {run_dir} is in use by another training process: it cannot be resumed while it trains")
            recover_checkpoints(path.parent)
            return run_dir, path
        # A checkpoint folder copied elsewhere: it continues in a new run folder.
        resume_from, recipe = path, attrs.evolve(recipe, train=attrs.evolve(train, resume=None))
        return find_run_dir(recipe, model_family)[0], resume_from
    root.mkdir(parents=True, exist_ok=True)
    name = tracking.run_name or f"{model_family}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = root / name, 0
    while not _claim(run_dir, named=bool(tracking.run_name)):
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


def save_model(engine, path, position: tuple[int, int] | None = None) -> None:
    """`path/` loadable with AutoModelFor….from_pretrained and AutoImageProcessor.from_pretrained,
    written beside it first and swapped in. `position`: (epoch, optimizer step) of the checkpoint
    these weights are (default: the engine's current ones), recorded in cvengine.json so that a
    resume can tell whether `model/` is still `checkpoints/best`."""
    acc = engine.accelerator
    refuse_nonfinite_weights(engine, f"by epoch {engine.state.epoch} (step {engine.state.global_step})")
    acc.wait_for_everyone()
    if acc.is_main_process:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.saving")
        if tmp.exists():
            shutil.rmtree(tmp)
        acc.unwrap_model(engine.model).save_pretrained(tmp)
        engine.adapter.save(tmp)
        epoch, step = position or (engine.state.epoch, engine.state.global_step)
        write_json(tmp / MODEL_METADATA, {**model_metadata(engine), "checkpoint": {"epoch": epoch, "global_step": step}})
        kill_point("model.written")
        replace_dir(tmp, path)
    acc.wait_for_everyone()


def model_position(model_dir: Path) -> tuple[int, int] | None:
    """(epoch, optimizer step) of the checkpoint a `model/` folder was exported from, if recorded."""
    try:
        recorded = json.loads((Path(model_dir) / MODEL_METADATA).read_text()).get("checkpoint") or {}
        return int(recorded["epoch"]), int(recorded["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    model = engine.accelerator.unwrap_model(engine.model)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied weights are stored once; anything else missing means the checkpoint is of another model.
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {}) | set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if unexpected or len(missing) > 0.5 * len(weights):
        raise CvengineError(f"{found} does not match model '{engine.recipe.model.name}': {len(missing)} missing, {len(unexpected)} unexpected keys")


# ----------------------------------------------------------------------------------------------------
# The hook


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a complete checkpoint folder, its completeness mark (train_state.json) last."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(TRAIN_STATE))
    shutil.copy2(src / TRAIN_STATE, dst / TRAIN_STATE)


def repair_model_folder(engine) -> None:
    """Make `model/` the weights of `checkpoints/best` again when a crash left it stale or missing
    (it is written after `best` is swapped in). The model's weights are those of `best` afterwards."""
    from accelerate.utils import broadcast_object_list

    acc = engine.accelerator
    run_dir = Path(engine.run_dir)
    best = run_dir / "checkpoints" / "best"
    answer = [None]
    if acc.is_main_process and read_train_state(best) is not None and model_position(run_dir / "model") != _position(best):
        answer = [_position(best)]
    broadcast_object_list(answer)
    if answer[0] is None:
        return
    log.info(f"{run_dir / 'model'} is not the weights of {best}: rewriting it")
    load_weights(engine, best)
    save_model(engine, run_dir / "model", position=answer[0])


class CheckpointHook(Callback):
    """`checkpoints/last` after every evaluated epoch, `checkpoints/best` and `model/` when the
    monitored metric improves. Each is written completely beside its place and swapped in; a crash
    at any point leaves the previous complete copy, which the next resume finds (`recover_checkpoints`,
    `repair_model_folder`)."""

    def __init__(self, save_best: bool = True, save_last: bool = True):
        self.save_best = save_best
        self.save_last = save_last

    def on_fit_start(self, engine, state):
        if engine.resume_from is None:
            return
        resume_from = Path(engine.resume_from)
        if resume_from.parent == Path(engine.run_dir) / "checkpoints":
            repair_model_folder(engine)
            resume_from = checkpoint_dir(resume_from)
        load_checkpoint(engine, resume_from)
        state.should_stop = False
        state.status = "RUNNING"
        log.info(f"resumed from {resume_from} at epoch {state.epoch}, step {state.global_step}")

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
        save_checkpoint(engine, tmp)
        improved = self.save_best and state.improved
        if acc.is_main_process:
            kill_point("checkpoint.saved")
            if improved:
                _copy_checkpoint(tmp, root / ".saving-best")
                kill_point("best.copied")
                replace_dir(root / ".saving-best", root / "best")
            if self.save_last:
                replace_dir(tmp, root / "last")
            else:
                shutil.rmtree(tmp)
        if improved:
            save_model(engine, Path(engine.run_dir) / "model")
        acc.wait_for_everyone()
