"""Hook objects: the only extension points of the loop.

The engine calls, in this order:
  on_fit_start → (on_epoch_start → on_step_end* [on_log] → [on_eval_start → on_eval_end] → on_epoch_end)*
  → on_fit_end
Hooks read the engine's public attributes (recipe, accelerator, model, run_dir) and talk back only
through `state` (e.g. `state.should_stop = True`).
"""
from __future__ import annotations

import logging
import math
import time

from pathlib import Path

import attrs
import numpy as np
import torch

log = logging.getLogger("cvengine")


@attrs.define
class TrainState:
    """Counters and results the loop and its hooks share; saved with every checkpoint."""

    epoch: int = 0  # completed epochs
    global_step: int = 0  # optimizer steps taken
    should_stop: bool = False
    metrics: dict = attrs.Factory(dict)  # the last evaluation's metrics
    best_metric: float | None = None
    best_epoch: int | None = None
    improved: bool = False  # the last evaluation set a new best
    evaluated: bool = False  # this epoch ended with an evaluation (checkpoints are saved then)
    epochs_without_improvement: int = 0
    history: list = attrs.Factory(list)  # one row per epoch: epoch, train loss, metrics, seconds
    status: str = "RUNNING"  # RUNNING, FINISHED, FAILED, KILLED (SIGINT, SIGTERM)

    def state_dict(self) -> dict:
        return attrs.asdict(self)

    def load_state_dict(self, data: dict) -> None:
        for key, value in data.items():
            setattr(self, key, value)


class Callback:
    """Base class: override the events you need. Every method receives the engine and the state."""

    def on_fit_start(self, engine, state: TrainState) -> None: ...

    def on_epoch_start(self, engine, state: TrainState) -> None: ...

    def on_step_end(self, engine, state: TrainState) -> None: ...

    def on_log(self, engine, state: TrainState, logs: dict) -> None:
        """Every `train.log_every_steps` optimizer steps, with averaged losses, lr and images/s."""

    def on_eval_start(self, engine, state: TrainState) -> None:
        """Before the evaluation that ends an epoch (every train.eval_every_epochs)."""

    def on_eval_end(self, engine, state: TrainState, metrics: dict) -> None: ...

    def on_epoch_end(self, engine, state: TrainState) -> None: ...

    def on_fit_end(self, engine, state: TrainState) -> None:
        """Always called, also after a failure (then `state.status == "FAILED"`)."""


class EarlyStopping(Callback):
    """Stops when the monitored metric has not improved for `patience` evaluations."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, engine, state):
        if state.epochs_without_improvement >= self.patience:
            log.info(f"early stopping: {engine.monitor} has not improved for {self.patience} epochs (best {state.best_metric:.4f} at epoch {state.best_epoch})")
            state.should_stop = True


class LearningRateMonitor(Callback):
    """Adds the learning rate of every parameter group to the logs."""

    def on_log(self, engine, state, logs):
        for i, group in enumerate(engine.optimizer.param_groups):
            logs[f"lr/{group.get('name', i)}"] = group["lr"]


def format_metric(value) -> str:
    """A metric for a log line: counts as integers (32, not 32.0000), the rest with 4 decimals."""
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return str(int(value))
    return f"{value:.4f}"


class Progress(Callback):
    """A start-up line, a bar per epoch with loss and images/s (enabled=True), one line per evaluation
    and a summary table at the end. enabled=None: no output at all (Tune trials, whose study prints
    its own table). Main process only."""

    def __init__(self, enabled: bool | None = True):
        self.enabled = enabled
        self.bar = None

    def on_fit_start(self, engine, state):
        self.started, self.epochs_run = time.perf_counter(), 0
        if self.enabled is None or not engine.accelerator.is_main_process:
            return
        sizes = ", ".join(f"{len(index)} {split}" for split, index in engine.indexes.items())
        remaining = engine.recipe.train.max_epochs - state.epoch
        log.info(
            f"training {engine.model_family} ({engine.recipe.task}) on {engine.accelerator.device}: {sizes} images,"
            f" {engine.steps_per_epoch} steps per epoch, {remaining} epoch(s) to go; run folder {engine.run_dir}"
        )

    def on_epoch_start(self, engine, state):
        if not (self.enabled and engine.accelerator.is_main_process):
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=engine.steps_per_epoch, desc=f"epoch {state.epoch + 1}/{engine.recipe.train.max_epochs}", leave=False, dynamic_ncols=True)

    def on_step_end(self, engine, state):
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, engine, state, logs):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{logs['train/loss']:.4f}", img_s=f"{logs['train/images_per_s']:.1f}")

    def on_eval_end(self, engine, state, metrics):
        if self.enabled is not None and engine.accelerator.is_main_process:
            # The epoch's bar goes first: a log line written under a live bar is glued to it.
            self._close_bar()
            shown = ", ".join(f"{k}={format_metric(v)}" for k, v in metrics.items() if k.count("/") == 1 and not math.isnan(v))
            log.info(f"epoch {state.epoch + 1}: {shown}")

    def on_epoch_end(self, engine, state):
        self.epochs_run += 1
        self._close_bar()

    def _close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_fit_end(self, engine, state):
        self._close_bar()
        if self.enabled is None or not (engine.accelerator.is_main_process and state.history):
            return
        keys = [engine.monitor] + [k for k in ("val/map_50", "val/accuracy", "val/miou", "val/pq") if k != engine.monitor and k in state.history[-1]]
        header = f"{'epoch':>5}  {'train/loss':>10}  " + "  ".join(f"{k:>12}" for k in keys) + f"  {'seconds':>8}"
        lines = [header]
        for row in state.history:
            mark = " *" if row["epoch"] == state.best_epoch else ""
            # Epochs without an evaluation show "-" (not NaN) in the metric columns.
            vals = "  ".join(f"{row[k]:>12.4f}" if isinstance(row.get(k), (int, float)) and not math.isnan(row[k]) else f"{'-':>12}" for k in keys)
            lines.append(f"{row['epoch']:>5}  {row.get('train/loss', float('nan')):>10.4f}  {vals}  {row['seconds']:>8.1f}{mark}")
        log.info("\n".join(lines) + f"\n(* best {engine.monitor}; run folder {engine.run_dir})")
        log.info(self.closing_line(engine, state))

    def closing_line(self, engine, state) -> str:
        """The best epoch's main metric and its companion (detection: val/map AND val/map_50), this
        process's wall time of fit and its training images per second (evaluation included)."""
        elapsed = time.perf_counter() - self.started
        best = next((row for row in state.history if row["epoch"] == state.best_epoch), state.history[-1])
        keys = [engine.monitor] + [k for k in ("val/map_50",) if k != engine.monitor]
        shown = ", ".join(f"{k} = {format_metric(best[k])}" for k in keys if k in best)
        train = engine.indexes.get("train")
        rate = f", {len(train) * self.epochs_run / elapsed:.1f} train images/s" if train is not None and elapsed > 0 else ""
        where = f"model folder {engine.run_dir}/model" if (Path(engine.run_dir) / "model").is_dir() else f"run folder {engine.run_dir}"
        return f"best {shown or 'epoch'} (epoch {state.best_epoch}); {self.epochs_run} epoch(s) in {elapsed:.1f} s{rate}; {where}"


class Timer:
    """Images/s over a window of steps."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.start = time.perf_counter()
        self.images = 0

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0


class EMA(Callback):
    """An exponential moving average of the model's weights (RT-DETR's / D-FINE's ModelEMA): after
    every optimizer step, for each floating-point tensor of the state dict,
        ema = d x ema + (1 - d) x weight,   d = decay x (1 - exp(-updates / warmup)),
    other tensors (integer buffers) copied. Evaluation during training runs on the average (swapped
    in at on_eval_start, out at on_eval_end, so checkpoints keep the training weights) and the
    exported model holds it. Its tensors travel with every checkpoint (checkpoint_tensors), so a
    resumed run continues the same average."""

    def __init__(self, decay: float = 0.9999, warmup: int = 2000):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.averaged: dict | None = None  # state-dict key -> tensor, on the model's device
        self._training_weights: dict | None = None

    @staticmethod
    def _model(engine):
        return engine.accelerator.unwrap_model(engine.model)

    def on_fit_start(self, engine, state):
        if self.averaged is None:
            self.averaged = {k: v.detach().clone() for k, v in self._model(engine).state_dict().items()}

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.warmup))

    @torch.no_grad()
    def on_step_end(self, engine, state):
        self.updates += 1
        d = self.current_decay()
        for key, value in self._model(engine).state_dict().items():
            average = self.averaged[key]
            if average.is_floating_point():
                average.mul_(d).add_(value.detach().to(average.dtype), alpha=1.0 - d)
            else:
                average.copy_(value)

    def on_eval_start(self, engine, state):
        model = self._model(engine)
        self._training_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.averaged)

    def on_eval_end(self, engine, state, metrics):
        if self._training_weights is not None:
            self._model(engine).load_state_dict(self._training_weights)
            self._training_weights = None

    def export_state_dict(self) -> dict | None:
        """The weights the exported model holds: the average; None (the model's own weights) before
        any update, e.g. when a crashed run's model folder is rewritten from its best checkpoint,
        whose average load_weights has already put in the model."""
        return self.averaged if self.updates > 0 else None

    def checkpoint_tensors(self) -> dict:
        tensors = {f"averaged.{k}": v.detach().contiguous().clone() for k, v in self.averaged.items()}
        tensors["updates"] = torch.tensor(self.updates, dtype=torch.int64)
        return tensors

    def load_checkpoint_tensors(self, tensors: dict) -> None:
        self.updates = int(tensors["updates"])
        loaded = {k[len("averaged."):]: v for k, v in tensors.items() if k.startswith("averaged.")}
        if self.averaged is None:
            self.averaged = loaded
        else:
            for key, average in self.averaged.items():
                average.copy_(loaded[key])
