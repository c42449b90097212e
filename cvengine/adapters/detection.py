"""DETR-style object detectors of transformers: DETR, Conditional/Deformable/DAB-DETR, RT-DETR(v2),
D-FINE, YOLOS and relatives. They share one label format and one output format:

  labels:  per image {"class_labels": (N,) int64, "boxes": (N, 4) float cxcywh normalised by the
           resized, UNPADDED image size} — the convention of the original DETR and of the processors'
           post-processing, which scales normalised boxes by the original image size.
  outputs: logits (B, Q, C[+1]), pred_boxes (B, Q, 4) cxcywh normalised the same way.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from cvengine.data.dataset import Sample
from cvengine.data.transforms import Normalizer, ResizePolicy, pad_stack, resize_on_device

# COCO keeps at most 100 detections per image; no score threshold before metrics.
MAX_DETECTIONS = 100


class DetrFamilyAdapter:
    """Samples -> model inputs, and model outputs -> predictions in ORIGINAL-image pixels."""

    task = "detection"

    def __init__(self, model, processor, image_size: int | None = None):
        self.processor = processor
        self.resize = ResizePolicy.from_processor(processor, image_size, defer_upscale=True)
        if image_size is not None and getattr(processor, "size", None) is not None:
            processor.size = self.resize.size  # the exported processor carries the override
        self.normalize = Normalizer(processor)
        self.pad_multiple = int(getattr(processor, "size_divisor", None) or 1)
        self.accepts_pixel_mask = "pixel_mask" in inspect.signature(model.forward).parameters

    # -- in the loader workers ----------------------------------------------------------------------
    def collate(self, samples: list[Sample]) -> dict:
        image_sizes = [tuple(s.image.shape[:2]) for s in samples]
        input_sizes = [self.resize.input_hw(h, w) for h, w in image_sizes]
        pixels, pixel_mask = pad_stack([s.image for s in samples], self.pad_multiple)
        labels = []
        for s in samples:
            h, w = s.image.shape[:2]
            b = s.boxes_xyxy_abs
            cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h, (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], axis=1) if len(b) else np.zeros((0, 4), np.float32)
            labels.append({"class_labels": torch.from_numpy(s.labels.astype(np.int64)), "boxes": torch.from_numpy(cxcywh.astype(np.float32))})
        return {
            "pixels_uint8": pixels,  # (B, 3, H, W) uint8
            "pixel_mask": pixel_mask,  # (B, H, W) uint8
            "labels": labels,
            "image_ids": torch.tensor([s.image_id for s in samples], dtype=torch.int64),
            "orig_sizes": torch.tensor([s.orig_size for s in samples], dtype=torch.int64),  # (B, 2) H, W
            # Plain lists (stay on the host): sizes of the images in `pixels_uint8`, and the model-input
            # sizes they still have to reach on the device (upscaling is deferred to there).
            "image_sizes": image_sizes,
            "input_sizes": input_sizes,
        }

    # -- on the device ------------------------------------------------------------------------------
    def model_inputs(self, batch: dict, with_labels: bool = True) -> dict:
        # Padding is zero AFTER normalisation, as the processors pad.
        pixels, pixel_mask = batch["pixels_uint8"], batch["pixel_mask"]
        if batch["image_sizes"] != batch["input_sizes"]:
            pixels, pixel_mask = resize_on_device(pixels, batch["image_sizes"], batch["input_sizes"], self.pad_multiple)
            batch["pixel_mask"] = pixel_mask
        pixel_values = self.normalize(pixels) * pixel_mask.unsqueeze(1)
        inputs = {"pixel_values": pixel_values}
        if self.accepts_pixel_mask:
            inputs["pixel_mask"] = batch["pixel_mask"].long()
        if with_labels:
            inputs["labels"] = batch["labels"]
        return inputs

    @staticmethod
    def loss(outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and its main components (auxiliary-layer terms left out of the log)."""
        parts = {k: v for k, v in (outputs.loss_dict or {}).items() if not any(ch.isdigit() for ch in k) and "enc" not in k and "aux" not in k}
        return outputs.loss, parts

    def postprocess(self, outputs, batch: dict) -> list[dict]:
        """-> per image {image_id, boxes_xyxy_abs (N, 4) original pixels, scores (N,), labels (N,)}."""
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        target_sizes = batch["orig_sizes"].tolist()
        results = self.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=target_sizes)
        predictions = []
        for image_id, (h, w), res in zip(batch["image_ids"].tolist(), target_sizes, results):
            scores = res["scores"].detach().float()
            order = torch.argsort(scores, descending=True)[:MAX_DETECTIONS]
            boxes = res["boxes"].detach().float()[order]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            predictions.append(
                {
                    "image_id": image_id,
                    "boxes_xyxy_abs": boxes.cpu().numpy(),
                    "scores": scores[order].cpu().numpy(),
                    "labels": res["labels"].detach()[order].cpu().numpy().astype(np.int64),
                }
            )
        return predictions
