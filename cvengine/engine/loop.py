"""The Engine: one explicit training loop on Accelerate, with hook objects around it.

    for epoch:                      on_epoch_start
        for batch:                  forward → loss → backward → (clip → step → schedule) on sync steps
                                    on_step_end, on_log every train.log_every_steps
        evaluate()                  whole split, per-rank evaluator states merged; on_eval_end
                                    on_epoch_end (checkpoints, early stopping)

Devices and precision live in `devices.py`, the optimizer and schedule in `optim.py`, run folders,
checkpoints and the exported model folder in `checkpoint.py`.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

from cvengine.adapters import adapter_class, load_model
from cvengine.cli import raise_if_terminated
from cvengine.data.coco import parsed_once
from cvengine.data.decode import EncodedCollate, decode_on_device, resolve_decode
from cvengine.data.images import max_image_pixels
from cvengine.engine import checkpoint as run_folder
from cvengine.engine.checkpoint import CheckpointHook, write_json, write_text
from cvengine.engine.devices import build_accelerator, size_host_threads, use_unused_parameter_search, worker_init
from cvengine.engine.hooks import EMA, EarlyStopping, LearningRateMonitor, Progress, Timer, TrainState
from cvengine.engine.optim import build_optimizer, build_scheduler, freeze_parameters
from cvengine.engine.tracking import MLflowHook, check_tracking_uri
from cvengine.errors import RecipeError, TrainingDiverged
from cvengine.recipe import Recipe, dump_recipe
from cvengine.tasks import get_task

log = logging.getLogger("cvengine")

DEFAULT = "default"  # sentinel: the built-in CheckpointHook / MLflowHook


def loader_workers(data) -> dict:
    """DataLoader arguments of the workers from [data]: kept alive between epochs and evaluations
    (SampleDataset keeps its epoch in shared memory so that they still see it) and batches prefetched."""
    if data.num_workers == 0:
        return {}
    kwargs = {"persistent_workers": data.persistent_workers}
    if data.prefetch_factor is not None:
        kwargs["prefetch_factor"] = data.prefetch_factor
    return kwargs


def refuse_large_images(index, max_pixels: int) -> None:
    """Refuse, before training starts, an image whose header size (the index read it) is above
    data.max_image_pixels; indexes without sizes are checked when each image is read."""
    import numpy as np

    from cvengine.data.images import check_pixels

    heights, widths = getattr(index, "heights", None), getattr(index, "widths", None)
    if heights is None or widths is None or len(heights) == 0:
        return
    pixels = np.asarray(heights, dtype=np.int64) * np.asarray(widths, dtype=np.int64)
    i = int(np.argmax(pixels))
    check_pixels(index.image_path(i), int(widths[i]), int(heights[i]), max_pixels)


class Engine:
    """Trains and evaluates the model a recipe describes.

    callbacks: extra hook objects (see `cvengine.engine.hooks.Callback`), called in order before the
    checkpoint and tracking hooks. checkpoint / tracker: hook objects replacing the built-in
    CheckpointHook / MLflowHook, or None to switch them off.
    """

    def __init__(self, recipe: Recipe, callbacks=(), checkpoint=DEFAULT, tracker=DEFAULT, run_dir: str | os.PathLike | None = None, progress: bool | None = True):
        from accelerate.utils import set_seed

        self.recipe = recipe
        self.task = get_task(recipe.task)
        self.monitor = recipe.train.monitor or self.task.main_metric
        self.mode = "min" if self.monitor.endswith("/loss") else self.task.mode
        self.accelerator = build_accelerator(recipe.train)
        self.host_threads = size_host_threads(recipe.data.num_workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        set_seed(recipe.train.seed)

        # Data first: a bad file fails here, before any run folder or MLflow run exists.
        splits = [split for split in ("train", "val", "test") if getattr(recipe.data, split) is not None]
        if not splits:
            raise RecipeError("[data] names no split: give [data.train] and [data.val] (images and annotations)")
        # Each annotations file parsed once: the validator hands its document to the index.
        with parsed_once():
            with max_image_pixels(recipe.data.max_image_pixels):
                reports = {split: self.task.validate_split(recipe, split) for split in splits}
            self.indexes = {split: self.task.load_index(recipe, split) for split in splits}
        for split, index in self.indexes.items():
            if len(index) == 0:
                where = getattr(index, "annotations_path", None) or getattr(recipe.data, split).images
                raise RecipeError(f"data.{split}: {where} lists no images; give a split with at least one image")
            refuse_large_images(index, recipe.data.max_image_pixels)
        # After every check has passed, so that a refused run prints its one error line alone.
        for split, report in reports.items():
            if report.warning_counts():
                log.warning(report.warnings_line(f"data.{split}"))
        reference = self.indexes.get("train") or next(iter(self.indexes.values()))
        for split, index in self.indexes.items():
            if index.label_map != reference.label_map:
                raise RecipeError(f"data.{split}.annotations ({index.annotations_path}) has other categories than {reference.annotations_path}; all splits need the same category list")
        self.label_map = reference.label_map
        self.class_names = self.label_map.names

        model, self.processor, self.model_family, reinitialised = load_model(recipe.model.name, recipe.model.pretrained, recipe.task, self.class_names, multi_label=recipe.model.multi_label, config=recipe.model.config)
        freeze_parameters(model, recipe.train.freeze, recipe.model.name)
        # A head just initialised at random predicts nothing meaningful: evaluate() refuses it until
        # it has been trained or weights are loaded.
        self.untrained_head = list(reinitialised)
        self.adapter = adapter_class(recipe.task, self.model_family)(model, self.processor, recipe.data.image_size)
        self.decode_device = None
        self.decode_on(resolve_decode(recipe.data.decode, self.accelerator.device, self.adapter, recipe.augment.enabled))
        use_unused_parameter_search(self.accelerator, self.adapter.has_unused_parameters(model))
        if recipe.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # With train.compile, Accelerate's dynamo settings compile the model here (lazily: at its first call).
        self.model = self.accelerator.prepare(model)

        self.state = TrainState()
        tracker = MLflowHook() if tracker == DEFAULT else tracker
        if isinstance(tracker, MLflowHook) and self.accelerator.is_main_process:
            check_tracking_uri(recipe)  # before any run folder exists
        self.run_dir, self.resume_from = run_folder.resolve_run_dir(self.accelerator, recipe, self.model_family, run_dir)

        # LearningRateMonitor first: it enriches the logs every later hook receives.
        hooks = [LearningRateMonitor(), *callbacks]
        if recipe.train.ema is not None:
            hooks.append(EMA(recipe.train.ema.decay, recipe.train.ema.warmup))
        if recipe.train.early_stopping_patience > 0:
            hooks.append(EarlyStopping(recipe.train.early_stopping_patience))
        hooks.append(CheckpointHook() if checkpoint == DEFAULT else checkpoint)
        hooks.append(tracker)
        # Progress last: its start-up line sees a resumed run's epoch, its closing line comes after
        # the model folder and the MLflow run are written.
        hooks.append(Progress(enabled=progress))
        self.hooks = [h for h in hooks if h is not None]
        self.optimizer = None
        self.scheduler = None
        self.steps_per_epoch = 0
        self._loaders: dict = {}
        self._train_batches = None

    def resolved_recipe(self) -> Recipe:
        """The recipe as run: absolute paths and the actual run name, so it re-runs from anywhere."""
        return run_folder.resolved_recipe(self.recipe, self.run_dir)

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, self.state, *args)

    def decode_on(self, device: torch.device | None) -> None:
        """Decode the loaders' JPEGs on `device` after the loader workers (None: in the workers, with
        PIL), as data.decode resolved it; before the first loader is built. Needs an adapter that
        resizes on the device and no augmentation (see cvengine.data.decode). Also decides where the
        adapter's resizes run: on the device after a device decode, in the workers on a CPU."""
        if getattr(self, "_loaders", None):
            raise RuntimeError("decode_on: the loaders are already built")
        self.decode_device = device
        if device is not None:
            # Every resize waits for the pixels, decoded on the device.
            self.adapter.resize.defer_above = 0.0
        elif self.accelerator.device.type == "cpu" and getattr(self.adapter, "resizes_on_device", False):
            # On a CPU the "device" step would run in this process, one after the other with the
            # training step; in the loader workers the resize runs beside it.
            self.adapter.resize.defer_above = None

    # ------------------------------------------------------------------------------------------------
    def _loader(self, split: str, train: bool):
        key = (split, train)
        if key not in self._loaders:
            dataset = self.task.build_dataset(self.recipe, self.indexes[split], self.adapter, train=train)
            dataset.max_image_pixels = self.recipe.data.max_image_pixels
            collate = self.adapter.collate
            if self.decode_device is not None:
                dataset.decode_on_device = True
                collate = EncodedCollate(collate, dataset.index.images_dir, dataset.max_image_pixels)
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=self.recipe.data.batch_size,
                shuffle=train,
                num_workers=self.recipe.data.num_workers,
                collate_fn=collate,
                pin_memory=torch.cuda.is_available(),
                worker_init_fn=worker_init,
                **loader_workers(self.recipe.data),
                generator=torch.Generator().manual_seed(self.recipe.train.seed) if train else None,
            )
            self._loaders[key] = (dataset, self.accelerator.prepare(loader))
        return self._loaders[key]

    def _setup_training(self, train_batches=None) -> None:
        if self.optimizer is not None:
            return
        if "train" not in self.indexes:
            raise RecipeError("[data.train] is required to train")
        if train_batches is None:
            _, loader = self._loader("train", train=True)
            batches_per_epoch = len(loader)
        else:
            batches_per_epoch = len(train_batches)
        if "val" in self.indexes:
            self._loader("val", train=False)  # prepared now so that checkpoints restore every loader
        self.steps_per_epoch = math.ceil(batches_per_epoch / self.recipe.train.accumulate)
        total = self.steps_per_epoch * self.recipe.train.max_epochs
        unwrapped = self.accelerator.unwrap_model(self.model)
        optimizer = build_optimizer(unwrapped, self.recipe.train, self.adapter.backbone_parameter_names(unwrapped), self.recipe.model.name)
        self.optimizer = self.accelerator.prepare(optimizer)
        self.scheduler = build_scheduler(self.optimizer, self.recipe.train, total, self.steps_per_epoch)

    def fit(self, train_batches=None) -> TrainState:
        """Train for train.max_epochs (or until a hook sets state.should_stop).

        train_batches: optional sequence of batches already collated by the adapter (on any device),
        used as every epoch's training data in place of the recipe's train split: to measure the loop
        apart from data loading, or to feed data from another source. The train split still gives
        the class names."""
        self._setup_training(train_batches)
        self._train_batches = train_batches
        self._nonfinite_steps = 0
        state = self.state
        recipe_file = Path(self.run_dir) / "recipe.toml"
        if self.accelerator.is_main_process:
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            # Held already when this engine chose the folder; taken here when it was given one.
            if not run_folder.lock_run_dir(self.run_dir):
                raise RecipeError(f"run folder {self.run_dir} is in use by another training process")
            if self.resume_from is None or not recipe_file.exists():
                write_text(recipe_file, dump_recipe(self.resolved_recipe()))
        self.accelerator.wait_for_everyone()
        try:
            self._call("on_fit_start")
            for epoch in range(state.epoch, self.recipe.train.max_epochs):
                if state.should_stop:
                    break
                started = time.perf_counter()
                train_loss = self._train_one_epoch(epoch)
                if state.should_stop and self._stopped_mid_epoch:
                    break
                state.evaluated = (epoch + 1) % self.recipe.train.eval_every_epochs == 0 or epoch + 1 == self.recipe.train.max_epochs
                if state.evaluated:
                    run_folder.refuse_nonfinite_weights(self, f"by the end of epoch {epoch + 1} (step {state.global_step})")
                    self._call("on_eval_start")
                    metrics = self.evaluate("val") if "val" in self.indexes else {}
                    self._update_best(metrics)
                    self._call("on_eval_end", metrics)
                state.epoch = epoch + 1
                row = {"epoch": epoch + 1, "train/loss": train_loss, "seconds": time.perf_counter() - started}
                state.history.append({**row, **metrics} if state.evaluated else row)
                if state.evaluated:
                    self._write_fit_metrics()
                self._call("on_epoch_end")
            state.status = "FINISHED"
        except BaseException as err:
            state.status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            raise
        finally:
            try:
                self._call("on_fit_end")
            finally:
                run_folder.release_run_dir(self.run_dir)
        return state

    def _train_one_epoch(self, epoch: int) -> float:
        from accelerate.utils import send_to_device

        acc, state, train = self.accelerator, self.state, self.recipe.train
        if self._train_batches is None:
            dataset, loader = self._loader("train", train=True)
            dataset.set_epoch(epoch)
            loader.set_epoch(epoch)
        else:
            loader = self._train_batches
        self.model.train()
        self._stopped_mid_epoch = False
        self._call("on_epoch_start")
        epoch_loss = torch.zeros((), device=acc.device)
        window_loss = torch.zeros((), device=acc.device)
        window_parts: dict[str, torch.Tensor] = {}
        batches = window_batches = 0
        timer = Timer()
        for index, batch in enumerate(loader):
            if self._train_batches is not None:
                batch = send_to_device(batch, acc.device, non_blocking=True)
            with acc.accumulate(self.model):
                loss, parts = self._forward_loss(batch, epoch, index)
                if self._skip_nonfinite(loss, epoch, index):
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                acc.backward(loss)
                if acc.sync_gradients and train.grad_clip > 0:
                    acc.clip_grad_norm_(self.model.parameters(), train.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            # Losses stay on the device until a log step: no host sync per step.
            epoch_loss += loss.detach()
            window_loss += loss.detach()
            for k, v in parts.items():
                window_parts[k] = window_parts.get(k, 0) + v.detach()
            batches += 1
            window_batches += 1
            timer.images += len(batch["image_ids"]) * acc.num_processes
            raise_if_terminated()
            if not acc.sync_gradients:
                continue
            self.scheduler.step()
            state.global_step += 1
            self._call("on_step_end")
            if state.global_step % train.log_every_steps == 0:
                logs = {"train/loss": (window_loss / window_batches).item(), "train/images_per_s": timer.rate(), "train/epoch": epoch + batches / len(loader)}
                logs.update({f"train/{k}": (v / window_batches).item() for k, v in window_parts.items()})
                self._call("on_log", logs)
                window_loss.zero_()
                window_parts, window_batches = {}, 0
                timer.reset()
            if state.should_stop:
                self._stopped_mid_epoch = batches < len(loader)
                break
        mean = acc.reduce(epoch_loss / max(batches, 1), reduction="mean")
        return float(mean.item())

    def _forward(self, batch: dict, with_labels: bool = True):
        if self.decode_device is not None:
            decode_on_device(batch, self.decode_device)
        inputs = self.adapter.model_inputs(batch, with_labels=with_labels)
        if self.recipe.train.channels_last and inputs["pixel_values"].dim() == 4:
            inputs["pixel_values"] = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
        if not hasattr(self.model, "_orig_mod"):
            return self.model(**inputs)
        try:
            return self.model(**inputs)
        except Exception as error:  # noqa: BLE001 - any compiler failure; an error of the model itself recurs in eager mode
            # The compiled wrapper shares its parameters with the model below it (the one Accelerate
            # checkpoints): the optimizer and checkpoints stay valid. Every later call runs eagerly.
            self.model = self.model._orig_mod
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            log.warning(f"train.compile: the model did not compile ({type(error).__name__}: {first_line[:200]}); training continues eagerly")
            return self.model(**inputs)

    def _where(self, epoch: int, batch: int) -> str:
        return f"at step {self.state.global_step + 1} (epoch {epoch + 1}, batch {batch + 1})"

    def _forward_loss(self, batch, epoch: int, batch_index: int):
        """(loss, loss parts) of a training batch. Weights that became NaN or inf make some models
        fail inside their forward (e.g. a matcher refusing a NaN cost matrix): that is reported as
        divergence, not as the model's error."""
        try:
            outputs = self._forward(batch)
            return self.adapter.loss(outputs)
        except Exception:
            where = self._where(epoch, batch_index)
            run_folder.refuse_nonfinite_weights(self, where)
            # Finite but huge weights overflow to inf/NaN activations: see what the model outputs.
            with torch.no_grad():
                outputs = self._forward(batch, with_labels=False)
            values = [v for v in (outputs.values() if hasattr(outputs, "values") else [outputs]) if isinstance(v, torch.Tensor) and v.is_floating_point()]
            if any(not bool(torch.isfinite(v).all()) for v in values):
                raise TrainingDiverged(
                    f"the model's outputs became NaN or inf {where}: training stopped and nothing of it was saved "
                    f"(the last good checkpoint, if any, is in {Path(self.run_dir) / 'checkpoints'}); lower train.lr or set train.grad_clip"
                ) from None
            raise

    def _skip_nonfinite(self, loss: torch.Tensor, epoch: int, batch_index: int) -> bool:
        """Whether this batch's loss is NaN or inf on any rank (then its step is skipped on every
        rank), raising TrainingDiverged past train.max_nonfinite_steps. One scalar read per batch:
        the price of never applying a non-finite step."""
        bad = self.accelerator.reduce((~torch.isfinite(loss.detach())).float(), reduction="sum")
        if not bad.item():
            return False
        self._nonfinite_steps += 1
        limit = self.recipe.train.max_nonfinite_steps
        text = f"train/loss is {loss.item()} {self._where(epoch, batch_index)}"
        if self._nonfinite_steps > limit:
            raise TrainingDiverged(
                f"{text}: training stopped ({self._nonfinite_steps} non-finite loss(es), train.max_nonfinite_steps = {limit}); nothing of it was saved "
                f"(the last good checkpoint, if any, is in {Path(self.run_dir) / 'checkpoints'}); lower train.lr or set train.grad_clip"
            )
        log.warning(f"{text}: batch skipped ({self._nonfinite_steps} of train.max_nonfinite_steps = {limit})")
        return True

    def _update_best(self, metrics: dict) -> None:
        state = self.state
        state.metrics = metrics
        if not metrics:
            state.improved = True  # no validation split: the latest model is the best one we know
            return
        if self.monitor not in metrics:
            raise RecipeError(f"train.monitor = '{self.monitor}' is not among the metrics: {', '.join(sorted(metrics))}")
        value = metrics[self.monitor]
        best = state.best_metric
        improved = not math.isnan(value) and (best is None or (value > best if self.mode == "max" else value < best))
        state.improved = improved
        if improved:
            state.best_metric, state.best_epoch, state.epochs_without_improvement = value, state.epoch + 1, 0
        else:
            state.epochs_without_improvement += 1

    def _write_fit_metrics(self) -> None:
        if not self.accelerator.is_main_process:
            return
        history = self.state.history
        best_row = next((row for row in history if row["epoch"] == self.state.best_epoch), history[-1])
        data = {"monitor": self.monitor, "best_epoch": self.state.best_epoch, "best": best_row, "last": history[-1], "history": history}
        write_json(Path(self.run_dir) / "metrics.json", data)

    # ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, split: str = "val", predictions_path: str | os.PathLike | None = None) -> dict[str, float]:
        """Metrics over the whole split, on every rank: each rank scores its share of the images
        into its evaluator's small mergeable state (confusion matrices, PQ sums, COCO result rows),
        the main rank merges them; `<split>/loss` is the model's own loss on the split. With
        `predictions_path` the task's predictions file is written there."""
        from accelerate.utils import broadcast_object_list, gather_object

        if split not in self.indexes:
            raise RecipeError(f"[data.{split}] is not in the recipe: cannot evaluate the {split} split")
        if self.untrained_head and self.state.global_step == 0:
            raise RecipeError(
                f"model.name '{self.recipe.model.name}': its classification head was just initialised at random for the data set's classes "
                f"({', '.join(self.untrained_head[:3])}{' …' if len(self.untrained_head) > 3 else ''}), so its predictions mean nothing; "
                "evaluate a trained run folder, or a checkpoint whose id2label names the data set's classes"
            )
        _, loader = self._loader(split, train=False)
        was_training = self.model.training
        self.model.eval()
        evaluator = self.task.evaluator(self.indexes[split], predictions_path)
        with_loss = self.adapter.loss_at_evaluation
        loss_sum = torch.zeros((), device=self.accelerator.device)
        batches = 0
        for batch in loader:
            raise_if_terminated()
            # With the labels: one forward gives the predictions and the split's loss.
            outputs = self._forward(batch, with_labels=with_loss)
            if with_loss:
                loss_sum += self.adapter.loss(outputs)[0].detach().float()
            batches += 1
            evaluator.update(self.adapter.postprocess(outputs, batch))
        if was_training:
            self.model.train()
        mean_loss = self.accelerator.reduce(loss_sum / max(batches, 1), reduction="mean")
        states = gather_object([evaluator.state()]) if self.accelerator.num_processes > 1 else [evaluator.state()]
        answer = [None]
        if self.accelerator.is_main_process:
            evaluator.merge(states)
            metrics = evaluator.compute()
            if split != "val":
                metrics = {k.replace("val/", f"{split}/", 1): v for k, v in metrics.items()}
            if with_loss:
                metrics[f"{split}/loss"] = float(mean_loss.item())
            metrics[f"{split}/num_images"] = evaluator.num_images
            if predictions_path is not None:
                evaluator.write()
            answer = [metrics]
        broadcast_object_list(answer)
        return answer[0]

    def load_weights(self, checkpoint: str | os.PathLike) -> None:
        """Model weights from a checkpoint folder (`checkpoints/best`, `last`) or an exported `model/`."""
        run_folder.load_weights(self, checkpoint)
        self.untrained_head = []

    def save_model(self, path: str | os.PathLike) -> None:
        """`path/` loadable with AutoModelFor….from_pretrained and AutoImageProcessor.from_pretrained."""
        run_folder.save_model(self, path)
