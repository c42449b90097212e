"""Image classifiers of transformers (`AutoModelForImageClassification`: ViT, DeiT, BEiT, DINOv2,
ResNet, ConvNeXt(V2), Swin, EfficientNet, MobileNetV2, MobileViT) and timm models through
`TimmWrapper`. One label format and one output format for all of them:

  labels:  (B,) int64 class ids, or (B, K) float multi-hot when the config's problem_type is
           "multi_label_classification" (the model's loss is then BCE-with-logits).
  outputs: logits (B, K).

Images are resized to a fixed square (the processor's crop size, else its size) in the loader
workers, so that a batch needs no padding; normalisation happens on the device.
"""
from __future__ import annotations

import types

import numpy as np
import torch

from cvengine.data.dataset import Sample
from cvengine.data.transforms import Normalizer, ResizePolicy, pad_stack

MULTI_LABEL = "multi_label_classification"


def processor_settings(processor):
    """An object with size / image_mean / image_std / rescale settings of any processor: the
    transformers ones have them as attributes; timm's wrapper keeps them in `data_config`."""
    data_config = getattr(processor, "data_config", None)
    if data_config is None:
        return processor
    _, height, width = data_config["input_size"]
    return types.SimpleNamespace(
        size={"height": int(height), "width": int(width)}, do_resize=True, do_center_crop=False, crop_size=None,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(data_config["mean"]), image_std=list(data_config["std"]),
    )


def square_side(processor, image_size: int | None) -> int:
    """The side of the square the model is fed: the recipe's image_size, else the processor's crop
    size when it centre-crops, else its size."""
    if image_size is not None:
        return int(image_size)
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    for size in (crop, getattr(processor, "size", None)):
        if size is None:
            continue
        if isinstance(size, (int, float)):
            return int(size)
        get = size.get if hasattr(size, "get") else (lambda k, s=size: getattr(s, k, None))
        for key in ("height", "shortest_edge", "width"):
            if get(key):
                return int(get(key))
    return 224


class ImageClassificationAdapter:
    """Samples -> model inputs, and logits -> per-image class probabilities."""

    task = "classification"

    def __init__(self, model, processor, image_size: int | None = None):
        self.processor = processor
        settings = processor_settings(processor)
        side = square_side(settings, image_size)
        self.resize = ResizePolicy({"height": side, "width": side})
        self.normalize = Normalizer(settings)
        self.multi_label = getattr(model.config, "problem_type", None) == MULTI_LABEL
        self.num_labels = int(model.config.num_labels)

    # -- in the loader workers ----------------------------------------------------------------------
    def collate(self, samples: list[Sample]) -> dict:
        pixels, _ = pad_stack([s.image for s in samples])
        if self.multi_label:
            # (B, K) multi-hot: every category present in the image.
            labels = torch.zeros((len(samples), self.num_labels), dtype=torch.float32)
            for row, s in enumerate(samples):
                labels[row, torch.from_numpy(np.asarray(s.labels, dtype=np.int64))] = 1.0
        else:
            labels = torch.tensor([int(s.class_label) for s in samples], dtype=torch.int64)
        return {
            "pixels_uint8": pixels,  # (B, 3, S, S) uint8
            "labels": labels,
            "image_ids": torch.tensor([s.image_id for s in samples], dtype=torch.int64),
            "orig_sizes": torch.tensor([s.orig_size for s in samples], dtype=torch.int64),  # (B, 2) H, W
        }

    # -- on the device ------------------------------------------------------------------------------
    def model_inputs(self, batch: dict, with_labels: bool = True) -> dict:
        inputs = {"pixel_values": self.normalize(batch["pixels_uint8"])}
        if with_labels:
            inputs["labels"] = batch["labels"]
        return inputs

    @staticmethod
    def loss(outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return outputs.loss, {}

    def postprocess(self, outputs, batch: dict) -> list[dict]:
        """-> per image {image_id, scores (K,) float32}: softmax probabilities, or independent
        sigmoid probabilities for multi-label models."""
        logits = outputs.logits.float()
        scores = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        scores = scores.cpu().numpy()
        return [{"image_id": image_id, "scores": row} for image_id, row in zip(batch["image_ids"].tolist(), scores)]
