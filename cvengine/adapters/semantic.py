"""Semantic segmentation models of transformers (`AutoModelForSemanticSegmentation`): SegFormer,
UperNet, DPT, MobileViT (DeepLabV3 head) and BEiT. They share one label format and one output:

  labels:  (B, S, S) int64 label map at the input size, IGNORE (255) where nothing is learned.
           The models' own losses upsample their logits to the label size and skip the ignore index.
  outputs: logits (B, K, h, w) at a fraction of the input size.

Predictions are label maps at the ORIGINAL image size: logits are upsampled (bilinear) to each
image's original size before the argmax, so that metrics compare with the annotation pixels.
"""
from __future__ import annotations

import numpy as np
import torch

from cvengine.adapters.classification import square_side
from cvengine.data.dataset import Sample
from cvengine.data.masks import IGNORE
from cvengine.data.transforms import Normalizer, ResizePolicy, pad_stack

# Config attributes through which each family's loss learns the ignored label.
_IGNORE_INDEX_KEYS = ("semantic_loss_ignore_index", "loss_ignore_index")


class SemanticSegmentationAdapter:
    task = "semantic_segmentation"

    def __init__(self, model, processor, image_size: int | None = None):
        self.processor = processor
        side = square_side(processor, image_size)
        # A fixed square: every batch stacks without padding; label maps follow with NEAREST.
        self.resize = ResizePolicy({"height": side, "width": side})
        self.normalize = Normalizer(processor)
        for key in _IGNORE_INDEX_KEYS:
            if hasattr(model.config, key):
                setattr(model.config, key, IGNORE)

    # -- in the loader workers ----------------------------------------------------------------------
    def collate(self, samples: list[Sample]) -> dict:
        pixels, _ = pad_stack([s.image for s in samples])
        labels = torch.from_numpy(np.stack([s.semantic_map for s in samples]).astype(np.int64))
        return {
            "pixels_uint8": pixels,  # (B, 3, S, S) uint8
            "labels": labels,  # (B, S, S) int64, IGNORE = 255
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
        """-> per image {image_id, semantic_map (H, W) uint8 at the original image size}."""
        logits = outputs.logits  # (B, K, h, w)
        predictions = []
        for row, (image_id, (h, w)) in enumerate(zip(batch["image_ids"].tolist(), batch["orig_sizes"].tolist())):
            upsampled = torch.nn.functional.interpolate(logits[row : row + 1].float(), size=(h, w), mode="bilinear", align_corners=False)
            label_map = upsampled[0].argmax(dim=0).to(torch.uint8 if logits.shape[1] <= 255 else torch.int32)
            predictions.append({"image_id": image_id, "semantic_map": label_map.cpu().numpy()})
        return predictions
