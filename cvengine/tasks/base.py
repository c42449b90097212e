"""What every task shares: the split sections of a recipe, the default augmentation, and the
inference hooks, each delegating to the task's own modules (results, render, report)."""
from __future__ import annotations

import json
import os
from types import ModuleType

from cvengine.errors import RecipeError

# Train split only; every task's default when augment.transforms is empty.
DEFAULT_AUGMENT = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "RandomBrightnessContrast", "p": 0.2},
]


class Task:
    """Base of the task classes (`cvengine/tasks/<task>/task.py`). A task says what differs per task:
    how a split is read (`load_index`), its dataset, its evaluator, its main metric and direction, and
    how predictions are written (`results`, the one writer used by evaluate, predict, serving and the
    pyfunc model), drawn (`render`) and reported (`write_report`)."""

    name: str = ""
    main_metric: str = ""
    mode: str = "max"
    default_augment: list = DEFAULT_AUGMENT
    # The raw model outputs an exported ONNX graph returns, in order, for the adapter's postprocess.
    onnx_outputs: tuple = ()
    results: ModuleType  # records / document / keep_above / serving_output of this task's predictions

    # -- training and evaluation ------------------------------------------------------------------
    def split_section(self, recipe, split: str, needs: str):
        section = getattr(recipe.data, split)
        if section is None:
            raise RecipeError(f"[data.{split}] is missing: give {needs} for the {split} split")
        return section

    def load_index(self, recipe, split: str):
        raise NotImplementedError

    def split_files(self, recipe, split: str) -> tuple[str | None, str]:
        """(annotations file or None, images folder) of a split, resolved."""
        section = self.split_section(recipe, split, "images and annotations")
        return (recipe.resolve_path(section.annotations) if section.annotations else None), recipe.resolve_path(section.images)

    def masks_path(self, recipe, split: str) -> str | None:
        """The split's mask folder (semantic PNG label maps, panoptic PNGs), resolved; None when unset."""
        section = getattr(recipe.data, split)
        return recipe.resolve_path(section.masks) if section is not None and section.masks else None

    def validate_split(self, recipe, split: str):
        """Every record of the split checked with this task's rules before anything is written
        (cvengine.data.validate, the validator behind `data check`): the first error raises one line
        naming the file and the record. Returns the report (its warnings, counted by kind)."""
        from cvengine.data.validate import validate_or_raise

        annotations, images = self.split_files(recipe, split)
        labels = recipe.data.labels
        return validate_or_raise(
            self.name, split, annotations, images,
            self.masks_path(recipe, split),
            recipe.resolve_path(labels) if isinstance(labels, str) else labels,
            ignore_index=recipe.data.ignore_index, reduce_labels=recipe.data.reduce_labels,
            multi_label=recipe.model.multi_label, decode=recipe.data.check,
        )

    def build_dataset(self, recipe, index, adapter, train: bool):
        raise NotImplementedError

    def augment(self, recipe, with_boxes: bool = False, with_masks: bool = False):
        """The train split's Albumentations pipeline (None when switched off)."""
        from cvengine.data.transforms import build_augment

        return build_augment(recipe.augment.transforms or self.default_augment, recipe.augment.enabled, with_boxes=with_boxes, with_masks=with_masks)

    def evaluator(self, index, predictions_path: str | os.PathLike | None = None):
        raise NotImplementedError

    # -- inference hooks (evaluate, predict, serving, pyfunc, report) --------------------------------
    def prepare_predictor(self, adapter, label_map) -> None:
        """Anything post-processing needs beyond the weights (panoptic: which classes are stuff)."""

    def prediction_records(self, prediction: dict, image_id: int, file_name: str, label_map, out_dir=None) -> list[dict]:
        return self.results.records(prediction, image_id, file_name, label_map, out_dir)

    def write_predictions(self, path: str | os.PathLike, records: list[dict], label_map) -> None:
        """The task's predictions file from its records, written atomically."""
        write_json(path, self.results.document(records, label_map))

    def filter_prediction(self, prediction: dict, threshold: float) -> dict:
        return self.results.keep_above(prediction, threshold)

    def serving_output(self, prediction: dict, label_map) -> dict:
        return self.results.serving_output(prediction, label_map)

    def render(self, image, prediction: dict, class_names: list[str]):
        raise NotImplementedError

    def write_report(self, index, predictions_path: str, out_dir: str, title: str = "") -> str:
        raise NotImplementedError


def write_json(path: str | os.PathLike, data, indent: int | None = None) -> None:
    """`data` as JSON at `path`, through a temporary file: a crash never leaves half a file."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=indent)
    os.replace(tmp, path)


def png_name(file_name: str, image_id: int) -> str:
    """Where the PNG of an image's prediction goes inside the PNG folder: the image's relative path
    with `.png` (COCO panoptic's convention, sub-folders kept), or `<image id>.png` for a name that is
    absolute, climbs out with "..", or is a video frame (`clip.mp4@00001500ms`)."""
    from pathlib import PurePath

    path = PurePath(file_name)
    if not file_name or path.is_absolute() or ".." in path.parts or "@" in file_name:
        return f"{int(image_id):06d}.png"
    return path.with_suffix(".png").as_posix()


def write_png(folder, name: str, data: bytes) -> None:
    """`data` as `folder/name` (sub-folders created), through a temporary file."""
    from pathlib import Path

    target = Path(folder) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
