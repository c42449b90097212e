"""Checkpoints as a hook: `last` after every epoch, `best` when the monitored metric improves, both
written to a temporary folder first and swapped in, so that a crash never leaves a torn checkpoint.

A checkpoint is Accelerate's `save_state` folder: model, optimizer, scheduler, every rank's RNG
state, the sampler's epoch and our TrainState counters. Loading it resumes exactly where it stopped.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cvengine.engine.hooks import Callback

log = logging.getLogger("cvengine")


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


class CheckpointHook(Callback):
    def __init__(self, save_best: bool = True, save_last: bool = True):
        self.save_best = save_best
        self.save_last = save_last

    def on_fit_start(self, engine, state):
        if engine.resume_from is not None:
            engine.accelerator.load_state(str(engine.resume_from))
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
            engine.save_model(Path(engine.run_dir) / "model")
        acc.wait_for_everyone()
