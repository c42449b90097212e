"""Typed TOML recipes: one attrs class per section, dotted command-line overrides, typo detection.

Every field here is read by exactly one consumer; a key that nothing reads does not exist.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import attrs
import tomli
import tomli_w

from cvengine.errors import RecipeError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def _one_of(choices):
    def check(instance, attribute, value):
        if value not in choices:
            raise RecipeError(f"'{attribute.name}' must be one of {', '.join(choices)}; got {value!r}")

    return check


def _known_task(instance, attribute, value):
    from cvengine.tasks import TASKS

    if value not in TASKS:
        raise RecipeError(f"'{attribute.name}' must be one of {', '.join(TASKS)}; got {value!r}")


def _finite(attribute, value) -> None:
    # NaN passes every comparison (grad_clip = nan silently disabled clipping); inf is no setting.
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"'{attribute.name}' must be a finite number; got {value!r}")


def _positive(instance, attribute, value):
    _finite(attribute, value)
    if value is not None and value <= 0:
        raise RecipeError(f"'{attribute.name}' must be > 0; got {value!r}")


def _non_negative(instance, attribute, value):
    _finite(attribute, value)
    if value is not None and value < 0:
        raise RecipeError(f"'{attribute.name}' must be >= 0; got {value!r}")


def _seed(instance, attribute, value):
    # NumPy and the loader workers take seeds in [0, 2**32).
    if not 0 <= value < 2**32:
        raise RecipeError(f"'{attribute.name}' must be in [0, 2**32); got {value!r}")


@attrs.define
class ModelSection:
    # Hugging Face hub id or a local folder holding config.json (+ weights, preprocessor_config.json).
    name: str
    # true: the checkpoint's weights; false: the same architecture, randomly initialised.
    pretrained: bool = True
    # classification: every category present in an image is a target (sigmoid + binary cross-entropy)
    # instead of exactly one class per image (softmax + cross-entropy).
    multi_label: bool = False
    # Attributes of the model's config.json set before the model is built, e.g. {num_queries = 50} or
    # DETR's {mask_loss_coefficient = 0, dice_loss_coefficient = 0}; each must be an attribute the
    # config has. The classes (num_labels, id2label, label2id) come from the data set.
    config: dict = attrs.Factory(dict)


@attrs.define
class SplitSection:
    images: str
    # COCO json; optional only for layouts that carry labels in folder names (classification).
    annotations: Optional[str] = None
    # semantic_segmentation without annotations: a folder of single-channel PNG label maps, one per
    # image with the image's file stem (ADE20K / Cityscapes layout); class names from data.labels.
    masks: Optional[str] = None


@attrs.define
class DataSection:
    root: Optional[str] = None
    batch_size: int = attrs.field(default=8, validator=_positive)
    num_workers: int = attrs.field(default=2, validator=_non_negative)
    # Loader workers kept alive from one epoch (and evaluation) to the next instead of re-started,
    # and batches each worker prepares ahead (empty: torch's 2); no effect with num_workers = 0.
    persistent_workers: bool = False
    prefetch_factor: Optional[int] = attrs.field(default=None, validator=_positive)
    # Where JPEGs are decoded: "cpu" in the loader workers (PIL); "gpu" on the CUDA device after
    # them, batched (torchvision's nvJPEG), for detection and semantic segmentation families without
    # augmentation; "auto" the device where all of that holds, else the workers.
    decode: str = attrs.field(default="cpu", validator=_one_of(("cpu", "gpu", "auto")))
    # Shorter side (or square side for fixed-size models) in pixels; overrides the processor's size,
    # scaling its longest-edge limit by the same factor.
    image_size: Optional[int] = attrs.field(default=None, validator=_positive)
    train: Optional[SplitSection] = None
    val: Optional[SplitSection] = None
    test: Optional[SplitSection] = None
    # semantic_segmentation with PNG masks: class names by label id, as a list ["wall", "floor", …]
    # or a file (JSON list, JSON object {"0": "wall", …}, or one name per line).
    labels: Optional[Union[str, list]] = None
    # Images with more pixels (width x height, from the file header) are refused before decoding:
    # a small compressed file can decode to gigabytes.
    max_image_pixels: int = attrs.field(default=40_000_000, validator=_positive)
    # The mask value that marks unlabelled pixels (not trained on, not scored).
    ignore_index: int = 255
    # ADE20K convention: mask value 0 is "other" (ignored) and every other value v is class v - 1.
    reduce_labels: bool = False
    # How deep every split is checked before anything is written (cvengine.data.validate): "header"
    # reads each image's size and EXIF orientation, "full" decodes every pixel (catches truncated
    # files), "none" opens no image file (the annotations are still checked).
    check: str = attrs.field(default="header", validator=_one_of(("full", "header", "none")))


@attrs.define
class AugmentSection:
    enabled: bool = True
    # Albumentations transforms by class name with their arguments, e.g.
    # [{name = "HorizontalFlip", p = 0.5}]. Empty: the task's default pipeline.
    transforms: list = attrs.Factory(list)


SCHEDULES = ("cosine", "linear", "step", "multistep", "constant")


@attrs.define
class SchedulerSection:
    """The learning rate after train.warmup_ratio of linear warm-up, as a function of the step."""

    # cosine: half-cosine from lr to lr x min_lr_ratio over the remaining steps; linear: straight line
    # to 0; step: x gamma every step_size epochs; multistep: x gamma at each epoch of milestones;
    # constant: lr.
    name: str = attrs.field(default="cosine", validator=_one_of(SCHEDULES))
    min_lr_ratio: float = attrs.field(default=0.0, validator=_non_negative)
    step_size: Optional[int] = attrs.field(default=None, validator=_positive)
    milestones: Optional[list] = None
    gamma: float = attrs.field(default=0.1, validator=_positive)

    def __attrs_post_init__(self):
        if self.name == "step" and self.step_size is None:
            raise RecipeError("name = 'step' needs step_size (epochs between decays)")
        if self.name == "multistep" and not self.milestones:
            raise RecipeError("name = 'multistep' needs milestones (epochs at which lr is multiplied by gamma)")
        if self.milestones is not None and (not all(isinstance(m, int) and m > 0 for m in self.milestones) or sorted(self.milestones) != self.milestones):
            raise RecipeError(f"milestones must be increasing positive epoch numbers; got {self.milestones}")


@attrs.define
class EmaSection:
    """An exponential moving average of the weights (RT-DETR's ModelEMA): after each optimizer step,
    ema = d x ema + (1 - d) x weights with d = decay x (1 - exp(-updates / warmup)), so that the
    average follows the weights closely in the first ~warmup updates."""

    decay: float = attrs.field(default=0.9999, validator=_positive)
    warmup: int = attrs.field(default=2000, validator=_positive)

    def __attrs_post_init__(self):
        if not self.decay < 1.0:
            raise RecipeError(f"decay must be below 1; got {self.decay}")


@attrs.define
class TrainSection:
    max_epochs: int = attrs.field(default=10, validator=_positive)
    lr: float = attrs.field(default=1e-4, validator=_positive)
    weight_decay: float = attrs.field(default=1e-4, validator=_non_negative)
    # Backbone parameters (as the model family's adapter names them) learn at lr × this; empty: at lr.
    backbone_lr_mult: Optional[float] = attrs.field(default=None, validator=_non_negative)
    # Parameter-name prefixes (e.g. ["detr."]) whose parameters are not trained: requires_grad off
    # before the optimizer is built. Each prefix must match at least one parameter.
    freeze: list = attrs.Factory(list)
    warmup_ratio: float = attrs.field(default=0.0, validator=_non_negative)
    scheduler: SchedulerSection = attrs.Factory(SchedulerSection)
    # Evaluate, checkpoint as best and export an exponential moving average of the weights; empty: off.
    ema: Optional[EmaSection] = None
    precision: str = attrs.field(default="auto", validator=_one_of(PRECISIONS))
    # Max global gradient norm; 0 disables clipping.
    grad_clip: float = attrs.field(default=0.1, validator=_non_negative)
    accumulate: int = attrs.field(default=1, validator=_positive)
    # Batches with a NaN or inf loss that are skipped (not applied) before training stops; 0: stop at
    # the first. Nothing non-finite is ever saved.
    max_nonfinite_steps: int = attrs.field(default=0, validator=_non_negative)
    seed: int = attrs.field(default=42, validator=_seed)
    output_dir: str = "runs"
    # Metric that selects the best checkpoint and drives early stopping; empty: the task's main metric.
    monitor: Optional[str] = None
    # Epochs without improvement of `monitor` before stopping; 0 disables early stopping.
    early_stopping_patience: int = attrs.field(default=0, validator=_non_negative)
    # "last" (the newest run of the experiment, or tracking.run_name's) or a checkpoint folder.
    resume: Optional[str] = None
    # torch.compile through Accelerate's dynamo settings, with dynamic shapes (detection batches
    # change size); a model that fails to compile trains eagerly, with one warning line.
    compile: bool = False
    # A torch.compile backend: "inductor" (generated kernels), "aot_eager" (traces, no codegen).
    compile_backend: str = attrs.field(default="inductor", validator=_one_of(("inductor", "aot_eager", "eager", "cudagraphs")))
    # Model weights and images in channels-last memory order: faster convolutions on GPUs (tensor
    # cores) for convolutional backbones; no gain for vision transformers.
    channels_last: bool = False
    log_every_steps: int = attrs.field(default=10, validator=_positive)
    # Evaluate (and save checkpoints) every N epochs, and always after the last one.
    eval_every_epochs: int = attrs.field(default=1, validator=_positive)


@attrs.define
class TrackingSection:
    # MLflow tracking URI; empty: sqlite:///<output_dir>/mlflow.db. "databricks" on Databricks.
    uri: Optional[str] = None
    experiment: str = "cvengine"
    # Also the run folder's name; empty: <model family>-<timestamp>.
    run_name: Optional[str] = None
    # At the end of training, log the best model as an MLflow pyfunc model (servable, loadable).
    log_model: bool = False
    # Log (whatever log_model says) and register the model under this name; "catalog.schema.name" on Unity Catalog.
    registered_model: Optional[str] = None
    # Alias given to the new version when its monitored metric beats the current holder's.
    alias: str = "champion"
    # MLflow registry URI, e.g. "databricks-uc"; empty: the tracking URI.
    registry_uri: Optional[str] = None


@attrs.define
class RayOnSparkSection:
    # Starts Ray on the workers of a Databricks (Spark) cluster with ray.util.spark.setup_ray_cluster
    # for the length of the run; the arguments are passed through. Empty values: Ray's defaults.
    max_worker_nodes: int = attrs.field(validator=_positive)
    min_worker_nodes: Optional[int] = attrs.field(default=None, validator=_non_negative)
    num_cpus_worker_node: Optional[int] = attrs.field(default=None, validator=_positive)
    num_gpus_worker_node: Optional[int] = attrs.field(default=None, validator=_non_negative)
    num_cpus_head_node: Optional[int] = attrs.field(default=None, validator=_non_negative)
    num_gpus_head_node: Optional[int] = attrs.field(default=None, validator=_non_negative)
    # Where Ray's logs are copied, e.g. a /Volumes/... folder (they vanish with the cluster otherwise).
    collect_log_to_path: Optional[str] = None


@attrs.define
class DistributedSection:
    # "accelerate": this process (one or many devices through `accelerate launch`);
    # "ray": Ray Train runs the same engine on num_workers workers, on one or many nodes.
    backend: str = attrs.field(default="accelerate", validator=_one_of(("accelerate", "ray")))
    # backend "ray": training processes (one per GPU on GPU nodes); data.batch_size is per worker.
    num_workers: int = attrs.field(default=1, validator=_positive)
    # backend "ray": one GPU per worker; empty: true when the Ray cluster has GPUs.
    use_gpu: Optional[bool] = None
    # backend "ray": Ray resources of each worker, e.g. {CPU = 4, GPU = 1}.
    resources_per_worker: dict = attrs.Factory(dict)
    # backend "ray": address of a running Ray cluster ("auto", "ray://host:10001"); empty: a local one.
    address: Optional[str] = None
    # backend "ray": restarts of the worker group after a failure, each resuming from the last
    # checkpoint reported to Ray.
    max_failures: int = attrs.field(default=0, validator=_non_negative)
    ray_on_spark: Optional[RayOnSparkSection] = None


@attrs.define
class TuneSection:
    # Search space over recipe keys by dotted path, each a one-key table:
    # "train.lr" = {loguniform = [1e-5, 1e-2]}, {uniform = [lo, hi]}, {choice = [a, b]}, {randint = [lo, hi]}.
    space: dict = attrs.Factory(dict)
    num_samples: int = attrs.field(default=8, validator=_positive)
    # Empty: train.monitor (or the task's main metric) and its direction.
    metric: Optional[str] = None
    mode: Optional[str] = attrs.field(default=None, validator=attrs.validators.optional(_one_of(("max", "min"))))
    # "asha" stops poor trials early (after grace_period evaluations); "fifo" runs every trial to the end.
    scheduler: str = attrs.field(default="asha", validator=_one_of(("asha", "fifo")))
    grace_period: int = attrs.field(default=1, validator=_positive)
    reduction_factor: float = attrs.field(default=2.0, validator=_positive)
    # "random" or "optuna" (TPE; needs `pip install optuna`).
    search: str = attrs.field(default="random", validator=_one_of(("random", "optuna")))
    max_concurrent_trials: Optional[int] = attrs.field(default=None, validator=_positive)
    # Ray resources of one trial when distributed.backend = "accelerate" (the trial trains in-process),
    # e.g. {CPU = 1, GPU = 1}; with backend "ray" each trial is a Ray Train run sized by [distributed].
    resources_per_trial: dict = attrs.Factory(dict)
    # Seed of the search algorithm; empty: train.seed.
    seed: Optional[int] = None


@attrs.define
class Recipe:
    task: str = attrs.field(validator=_known_task)
    model: ModelSection
    data: DataSection = attrs.Factory(DataSection)
    augment: AugmentSection = attrs.Factory(AugmentSection)
    train: TrainSection = attrs.Factory(TrainSection)
    tracking: TrackingSection = attrs.Factory(TrackingSection)
    distributed: DistributedSection = attrs.Factory(DistributedSection)
    # Read only by `python -m cvengine.tune`; a plain run ignores it.
    tune: Optional[TuneSection] = None
    # Where the recipe came from, for error messages and relative paths; not a TOML key.
    source: Optional[str] = attrs.field(default=None, kw_only=True, eq=False)

    def resolve_path(self, path: str) -> str:
        """A data path: absolute as is, else under data.root (or the cwd). load_recipe has already
        made the recipe's own paths absolute."""
        return path_under(self.data.root if self.data.root is not None else os.getcwd(), path)


# ----------------------------------------------------------------------------------------------------
# Relative paths. A path written in a recipe file is relative to the file's folder (the recipe and its
# data travel together); a path typed as a command-line override, or in a recipe dict, is relative to
# the current folder. Data split paths and data.labels are relative to data.root when it is set.

REMOTE_PREFIXES = ("dbfs:", "s3:", "gs:", "abfss:")
SQLITE_PREFIX = "sqlite:///"


def path_under(folder: str | os.PathLike, path: str) -> str:
    """`path` absolute as is (remote URLs too), else joined to `folder` and made absolute."""
    if path.startswith(REMOTE_PREFIXES):
        return path
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.abspath(os.path.join(folder, path))


def looks_like_path(name: str) -> bool:
    """True for a model.name that can only be a folder: hub ids are "name" or "org/name"."""
    text = str(name)
    return text in (".", "..") or text.startswith(("./", "../", "/", "~", ".\\")) or text.count("/") >= 2 or "\\" in text


def _sqlite_uri_under(folder, uri: str | None) -> str | None:
    # sqlite:///runs/mlflow.db is relative, sqlite:////abs/mlflow.db absolute.
    if uri and uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/"):
        return SQLITE_PREFIX + path_under(folder, uri[len(SQLITE_PREFIX):])
    return uri


def anchor_paths(recipe: Recipe, folder_of) -> Recipe:
    """The recipe with every relative path made absolute, each against `folder_of(dotted key)`; data
    split paths and data.labels against data.root when it is set. model.name becomes a folder only
    when it names one there or can only be one (else it stays a hub id)."""
    data = recipe.data
    root = path_under(folder_of("data.root"), data.root) if data.root is not None else None

    def data_path(key: str, path: str) -> str:
        return path_under(root if root is not None else folder_of(key), path)

    changes: dict[str, Any] = {"root": root}
    for split in ("train", "val", "test"):
        section = getattr(data, split)
        if section is not None:
            fields = ("images", "annotations", "masks")
            changes[split] = attrs.evolve(section, **{f: data_path(f"data.{split}.{f}", getattr(section, f)) for f in fields if getattr(section, f) is not None})
    if isinstance(data.labels, str):
        changes["labels"] = data_path("data.labels", data.labels)
    train = recipe.train
    resume = train.resume if train.resume in (None, "last") else path_under(folder_of("train.resume"), train.resume)
    train = attrs.evolve(train, output_dir=path_under(folder_of("train.output_dir"), train.output_dir), resume=resume)
    model = recipe.model
    folder = path_under(folder_of("model.name"), model.name)
    if folder != model.name and (looks_like_path(model.name) or os.path.isdir(folder)):
        model = attrs.evolve(model, name=folder)
    tracking = attrs.evolve(
        recipe.tracking,
        uri=_sqlite_uri_under(folder_of("tracking.uri"), recipe.tracking.uri),
        registry_uri=_sqlite_uri_under(folder_of("tracking.registry_uri"), recipe.tracking.registry_uri),
    )
    anchored = attrs.evolve(recipe, data=attrs.evolve(data, **changes), train=train, model=model, tracking=tracking)
    anchored.source = recipe.source
    return anchored


# ----------------------------------------------------------------------------------------------------
# Structuring plain dicts into the attrs classes, with the error messages users need.


def _is_attrs(tp) -> bool:
    return isinstance(tp, type) and attrs.has(tp)


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _structure(cls, data: Any, prefix: str, where: str):
    if not isinstance(data, dict):
        raise RecipeError(f"'{prefix or 'recipe'}' must be a table in {where}; got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
            raise RecipeError(f"unknown key '{dotted}' in {where}{hint}")
        kwargs[key] = _coerce(hints[key], value, dotted, where)
    missing = [n for n, f in fields.items() if f.default is attrs.NOTHING and n not in kwargs]
    if missing:
        raise RecipeError(f"missing key '{prefix}{missing[0]}' in {where}")
    try:
        return cls(**kwargs)
    except RecipeError as err:
        raise RecipeError(f"{where}: [{prefix.rstrip('.') or 'recipe'}] {err}") from None


def _coerce(tp, value, dotted: str, where: str):
    tp, optional = _unwrap_optional(tp)
    if value is None and optional:
        return None
    if _is_attrs(tp):
        return _structure(tp, value, dotted + ".", where)
    origin = typing.get_origin(tp) or tp
    if origin is bool:
        ok = isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif origin is str:
        ok = isinstance(value, str)
    elif origin is list:
        ok = isinstance(value, list)
    elif origin is dict:
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise RecipeError(f"'{dotted}' in {where} must be {_type_name(origin)}; got {value!r}")
    return value


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomli.loads(f"v = {raw}")["v"]
    except tomli.TOMLDecodeError:
        value = raw  # a bare word such as `train.resume=last` is a string
    return key.split("."), value


def _known_keys(cls, prefix="") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in attrs.fields(cls):
        if f.name == "source":
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        out.append(prefix + f.name)
        if _is_attrs(tp):
            out.extend(_known_keys(tp, prefix + f.name + "."))
    return out


def load_recipe(source: str | os.PathLike | dict, overrides: list[str] | tuple = ()) -> Recipe:
    """Read a TOML recipe (a path, or an already-parsed dict) and apply `section.key=value` overrides.
    Relative paths come back absolute: those written in the file against the file's folder, those of
    overrides and of a dict against the current folder (see anchor_paths)."""
    if isinstance(source, dict):
        # Overrides write into nested sections: the caller's dict (often reused for several runs) stays as given.
        data, where = copy.deepcopy(source), "the recipe dict"
    else:
        path = Path(source)
        where = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomli.load(fh)
        except FileNotFoundError:
            raise RecipeError(f"recipe file not found: {path}") from None
        except IsADirectoryError:
            raise RecipeError(f"{path} is a folder, not a recipe file; give the .toml file") from None
        except OSError as err:
            raise RecipeError(f"{path}: cannot read the recipe ({err.strerror})") from None
        except UnicodeDecodeError:
            raise RecipeError(f"{path} is not a text file; give a TOML recipe") from None
        except tomli.TOMLDecodeError as err:
            raise RecipeError(f"{path} is not valid TOML: {err}") from None
    recipe = _structure(Recipe, data, "", where)  # validate the file on its own first
    written = set(flatten(data)) if not isinstance(source, dict) else set()
    overridden = []
    for text in overrides:
        keys, value = _parse_override(text)
        overridden.append(".".join(keys))
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override '{text}': '{k}' is not a section")
        node[keys[-1]] = value
        dotted = ".".join(keys)
        # Free-form tables take any key below them: transforms by position, model.config by attribute.
        if dotted not in _known_keys(Recipe) and not dotted.startswith(("augment.transforms", "model.config.")):
            close = difflib.get_close_matches(dotted, _known_keys(Recipe), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"unknown key '{dotted}' in override '{text}'{hint}")
        recipe = _structure(Recipe, data, "", f"override '{text}'")
    recipe.source = None if isinstance(source, dict) else str(source)
    recipe_folder = Path(source).resolve().parent if not isinstance(source, dict) else None

    def folder_of(key: str):
        typed = any(key == o or key.startswith(o + ".") for o in overridden)
        return recipe_folder if key in written and not typed else os.getcwd()

    return anchor_paths(recipe, folder_of)


def _drop_none(obj):
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def recipe_to_dict(recipe: Recipe) -> dict:
    data = attrs.asdict(recipe, filter=lambda a, v: a.name != "source")
    return _drop_none(data)


def dump_recipe(recipe: Recipe) -> str:
    return tomli_w.dumps(recipe_to_dict(recipe))


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-4}} -> {'train.lr': 1e-4}, for MLflow params."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
