"""Panoptic segmentation: COCO panoptic (json + PNG folder) in, PQ / SQ / RQ (panopticapi's formula,
`cvengine/metrics/panoptic.py`) out; predictions written as COCO panoptic PNGs + json."""
from __future__ import annotations

import io
import json
import os

import numpy as np

from cvengine.data.mask_datasets import PanopticDataset
from cvengine.data.panoptic import PanopticIndex
from cvengine.data.transforms import build_augment
from cvengine.errors import RecipeError
from cvengine.metrics.panoptic import PQStat, id_to_rgb, rgb_to_id


class PanopticSegmentationTask:
    name = "panoptic_segmentation"
    main_metric = "val/pq"
    mode = "max"
    default_augment = [
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RandomBrightnessContrast", "p": 0.2},
    ]

    def load_index(self, recipe, split: str) -> PanopticIndex:
        section = getattr(recipe.data, split)
        if section is None:
            raise RecipeError(f"[data.{split}] is missing: give images, annotations (panoptic json) and masks (PNG folder) for the {split} split")
        if not section.annotations:
            raise RecipeError(f"data.{split}.annotations is required for {self.name} (a COCO panoptic json)")
        annotations = recipe.resolve_path(section.annotations)
        if section.masks:
            masks = recipe.resolve_path(section.masks)
        else:
            # COCO's layout: panoptic_val2017.json beside the folder panoptic_val2017/.
            masks = os.path.splitext(annotations)[0]
            if not os.path.isdir(masks):
                raise RecipeError(f"data.{split}.masks is not set and {masks}/ does not exist: give the folder of panoptic PNGs as data.{split}.masks")
        if not os.path.isdir(masks):
            raise RecipeError(f"data.{split}.masks: panoptic PNG folder not found: {masks}")
        return PanopticIndex.load(annotations, recipe.resolve_path(section.images), masks)

    def build_dataset(self, recipe, index: PanopticIndex, adapter, train: bool):
        # Stuff classes get one segment per class at post-processing time.
        adapter.set_stuff_labels(index.stuff_labels)
        augment = None
        if train:
            transforms = recipe.augment.transforms or self.default_augment
            augment = build_augment(transforms, recipe.augment.enabled, with_boxes=False, with_masks=True)
        return PanopticDataset(index, augment=augment, resize=adapter.resize, seed=recipe.train.seed)

    def evaluator(self, index: PanopticIndex) -> "PanopticEvaluator":
        return PanopticEvaluator(index)

    # -- inference hooks (predict, serving, report); no ONNX export for mask-classification models ----
    def prepare_predictor(self, adapter, metadata: dict) -> None:
        """The saved categories say which classes are stuff (one segment per class per image)."""
        self.categories = list(metadata.get("categories") or [])
        if hasattr(adapter, "set_stuff_labels"):
            adapter.set_stuff_labels(label for label, c in enumerate(self.categories) if not c.get("isthing", 1))

    def prediction_records(self, prediction: dict, image_id: int, file_name: str, label_to_category_id, class_names=(), out_dir=None) -> list[dict]:
        from cvengine.serving import panoptic

        return panoptic.records(prediction, image_id, file_name, label_to_category_id, out_dir)

    def predictions_document(self, records: list[dict], class_names: list[str], label_to_category_id) -> dict:
        from cvengine.serving import panoptic

        categories = getattr(self, "categories", None) or [{"id": int(c), "name": n} for n, c in zip(class_names, label_to_category_id)]
        return panoptic.document(records, categories)

    def filter_prediction(self, prediction: dict, threshold: float) -> dict:
        from cvengine.serving import panoptic

        return panoptic.keep_above(prediction, threshold)

    def render(self, image, prediction: dict, class_names: list[str]):
        from cvengine.serving import panoptic

        return panoptic.render(image, prediction, class_names)

    def serving_output(self, prediction: dict, class_names: list[str], label_to_category_id) -> dict:
        from cvengine.serving import panoptic

        return panoptic.serving_output(prediction, class_names, label_to_category_id)

    def write_report(self, index: PanopticIndex, predictions_path: str, out_dir: str, title: str = "") -> str:
        from cvengine.reports.panoptic import write_panoptic_report

        return write_panoptic_report(index, predictions_path, out_dir, title=title)


def _png_bytes(segment_map: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(id_to_rgb(segment_map)).save(buffer, format="PNG")
    return buffer.getvalue()


class PanopticEvaluator:
    """PQ of a whole split. Each image is scored as it arrives and its segment map kept as PNG bytes
    (a split of full-size int32 maps would not fit in memory)."""

    def __init__(self, index: PanopticIndex):
        self.index = index
        self.position = {int(i): k for k, i in enumerate(index.image_ids)}
        self.predictions: dict[int, dict] = {}
        self.stat = PQStat()

    def update(self, predictions: list[dict]) -> None:
        cat_ids = self.index.label_to_category_id
        for p in predictions:
            image_id = int(p["image_id"])
            if image_id in self.predictions:
                continue  # padding of the last batch across ranks repeats images
            k = self.position[image_id]
            gt_ids = self.index.segment_map(k)
            gt_segments = {sid: (int(cat_ids[label]), crowd) for sid, label, crowd in self.index.segments[k]}
            pred_segments = {s["id"]: int(cat_ids[s["label"]]) for s in p["segments"]}
            self.stat.update(gt_ids, gt_segments, p["segment_map"], pred_segments)
            self.predictions[image_id] = {"image_id": image_id, "png": _png_bytes(p["segment_map"]), "segments": p["segments"]}

    def compute(self) -> dict[str, float]:
        averages = self.stat.average(self.index.categories)
        return {f"val/{k}": float(v) for k, v in averages.items() if not k.startswith("n")}

    def write_predictions(self, path: str) -> None:
        """COCO panoptic: `path` (json with annotations + categories) and PNGs in the folder named
        after it (predictions.json -> predictions/)."""
        from PIL import Image

        folder = os.path.splitext(path)[0]
        os.makedirs(folder, exist_ok=True)
        cat_ids = self.index.label_to_category_id
        annotations = []
        for image_id, p in sorted(self.predictions.items()):
            k = self.position[image_id]
            png_name = os.path.splitext(self.index.file_names[k])[0] + ".png"
            target = os.path.join(folder, png_name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(p["png"])
            ids = rgb_to_id(np.asarray(Image.open(io.BytesIO(p["png"])).convert("RGB")))
            areas = np.bincount(ids.ravel())
            segments_info = [
                {"id": int(s["id"]), "category_id": int(cat_ids[s["label"]]), "score": float(s["score"]), "area": int(areas[s["id"]]) if s["id"] < len(areas) else 0, "iscrowd": 0}
                for s in p["segments"]
            ]
            annotations.append({"image_id": image_id, "file_name": png_name, "segments_info": segments_info})
        data = {"annotations": annotations, "categories": self.index.categories}
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
