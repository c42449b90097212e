"""Mask-classification models of transformers (Mask2Former, MaskFormer): one model, N (mask, class)
pairs per image, used here for instance, panoptic and semantic segmentation.

  labels:  mask_labels  list of (N_i, H, W) float 0/1 at the padded model input size, padded with 0
                        (the processors pad with 255 when sizes differ, which makes the loss explode)
           class_labels list of (N_i,) int64 contiguous labels
  outputs: class_queries_logits (B, Q, C + 1), the last class being "no object";
           masks_queries_logits (B, Q, h, w) at a fraction (1/4) of the padded input size.

Post-processing is done here rather than with the processors' `post_process_*`: those first resize
the mask logits to 384x384 whatever the input size and ignore padding, which distorts non-square and
padded inputs. The arithmetic is the same as theirs (Mask2Former's paper): instance score = class
probability x mean mask probability inside the mask; panoptic segments from the arg-max of
score-weighted mask probabilities (as Mask2Former's reference code), with stuff classes fused
into one segment per class.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F

from cvengine.adapters.base import Adapter, Family
from cvengine.data.dataset import Sample
from cvengine.data.masks import IGNORE
from cvengine.data.transforms import Normalizer, ResizePolicy, pad_stack

# COCO keeps at most 100 detections per image; no score threshold before metrics.
MAX_DETECTIONS = 100
# Query masks upsampled to the original image size at a time (n x H x W floats).
UPSAMPLE_CHUNK = 8


class MaskClassificationAdapter(Adapter):
    """Samples -> model inputs; model outputs -> mask logits in ORIGINAL-image pixels (subclasses
    turn them into instance or panoptic predictions)."""

    task = ""
    auto_model = "AutoModelForUniversalSegmentation"
    # Their Swin backbone's final layernorm is not applied (the pixel decoder takes the stage outputs).
    unused_parameter_families = frozenset({"mask2former", "oneformer"})
    # The pixel-level module's encoder (Swin, ResNet, …); its decoder and the transformer are the head.
    backbone_prefixes = ("model.pixel_level_module.encoder.",)

    def __init__(self, model, processor, image_size: int | None = None):
        super().__init__(model, processor, image_size)
        # The processor's resize rule (Mask2Former / MaskFormer stretch to a multiple of size_divisor);
        # no centre crop: every pixel is predicted.
        self.resize = ResizePolicy.from_processor(processor, image_size, crop=False)
        self.normalize = Normalizer(processor)
        # Swin/ResNet backbones with a pixel decoder need sides divisible by 32.
        self.pad_multiple = int(getattr(processor, "size_divisor", None) or 32)
        self.accepts_pixel_mask = "pixel_mask" in inspect.signature(model.forward).parameters

    # -- in the loader workers ----------------------------------------------------------------------
    @staticmethod
    def _masks_and_labels(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(N, h, w) 0/1 masks at the resized image size and their (N,) contiguous labels."""
        if sample.masks is None:
            return np.zeros((0,) + sample.image.shape[:2], np.uint8), np.zeros((0,), np.int64)
        return sample.masks, sample.labels

    def collate(self, samples: list[Sample]) -> dict:
        pixels, pixel_mask = pad_stack([s.image for s in samples], self.pad_multiple)
        height, width = pixels.shape[-2:]
        mask_labels, class_labels = [], []
        for s in samples:
            masks, labels = self._masks_and_labels(s)
            padded = np.zeros((len(masks), height, width), dtype=np.float32)
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            if padded.size and not np.isin(padded, (0.0, 1.0)).all():
                raise ValueError(f"image id {s.image_id}: masks must hold only 0 and 1")
            mask_labels.append(torch.from_numpy(padded))  # (N_i, H, W) float 0/1
            class_labels.append(torch.from_numpy(labels.astype(np.int64)))  # (N_i,)
        return {
            "pixels_uint8": pixels,  # (B, 3, H, W) uint8
            "pixel_mask": pixel_mask,  # (B, H, W) uint8, 1 on real pixels
            "mask_labels": mask_labels,
            "class_labels": class_labels,
            "image_ids": torch.tensor([s.image_id for s in samples], dtype=torch.int64),
            "orig_sizes": torch.tensor([s.orig_size for s in samples], dtype=torch.int64),  # (B, 2) H, W
            "input_sizes": torch.tensor([s.image.shape[:2] for s in samples], dtype=torch.int64),  # (B, 2) resized, unpadded
        }

    # -- on the device ------------------------------------------------------------------------------
    def model_inputs(self, batch: dict, with_labels: bool = True) -> dict:
        pixel_values = self.normalize(batch["pixels_uint8"]) * batch["pixel_mask"].unsqueeze(1)
        inputs = {"pixel_values": pixel_values}
        if self.accepts_pixel_mask:
            inputs["pixel_mask"] = batch["pixel_mask"].long()
        if with_labels:
            device = pixel_values.device
            inputs["mask_labels"] = [m.to(device) for m in batch["mask_labels"]]
            inputs["class_labels"] = [c.to(device) for c in batch["class_labels"]]
        return inputs

    @staticmethod
    def loss(outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # The outputs carry only the weighted total (class, mask and dice terms of every layer).
        return outputs.loss, {}

    @staticmethod
    def _mask_logits_original(masks_logits: torch.Tensor, padded_hw, input_hw, orig_hw) -> torch.Tensor:
        """(Q, h, w) logits (or any per-pixel maps) at 1/4 of the padded input -> (Q, H_orig, W_orig):
        upsample to the padded input, crop the padding away, resize to the original image."""
        logits = F.interpolate(masks_logits[None].float(), size=tuple(padded_hw), mode="bilinear", align_corners=False)
        logits = logits[:, :, : input_hw[0], : input_hw[1]]
        return F.interpolate(logits, size=tuple(orig_hw), mode="bilinear", align_corners=False)[0]


class InstanceSegmentationAdapter(MaskClassificationAdapter):
    task = "instance_segmentation"
    # Final score = class probability x mean mask probability inside the mask (Mask2Former's paper).
    mask_rescoring = True

    @staticmethod
    def query_outputs(outputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Q, C) class probabilities ("no object" left out) and (B, Q, h, w) mask logits."""
        return outputs.class_queries_logits.float().softmax(-1)[..., :-1], outputs.masks_queries_logits

    def postprocess(self, outputs, batch: dict) -> list[dict]:
        """-> per image {image_id, rles (list of COCO RLE, counts str), boxes_xyxy_abs (N, 4),
        scores (N,), labels (N,)}, at most MAX_DETECTIONS, in original-image pixels."""
        from pycocotools import mask as mask_utils

        class_probs, masks_logits = self.query_outputs(outputs)  # (B, Q, C), (B, Q, h, w)
        padded_hw = batch["pixels_uint8"].shape[-2:]
        predictions = []
        for b, image_id in enumerate(batch["image_ids"].tolist()):
            num_queries, num_classes = class_probs.shape[1], class_probs.shape[2]
            scores = class_probs[b]  # (Q, C)
            k = min(MAX_DETECTIONS, num_queries * num_classes)
            top_scores, top_index = scores.flatten().topk(k)  # (k,): a query may appear with several classes
            query = top_index // num_classes
            labels = top_index % num_classes
            orig_hw = batch["orig_sizes"][b].tolist()
            input_hw = batch["input_sizes"][b].tolist()
            # Only the top-k queries' masks are upsampled to the original size, a few at a time: all
            # Q of them at once would take Q x H x W floats (1.6 GB at Cityscapes size, 200 queries).
            kept_queries, position = torch.unique(query, return_inverse=True)
            rles_of_query, mask_score_of_query = [], torch.ones(len(kept_queries), device=scores.device)
            for start in range(0, len(kept_queries), UPSAMPLE_CHUNK):
                chunk = kept_queries[start : start + UPSAMPLE_CHUNK]
                logits = self._mask_logits_original(masks_logits[b][chunk], padded_hw, input_hw, orig_hw)  # (n, H, W)
                binary = logits > 0
                # Mask score: mean mask probability inside the predicted mask (Mask2Former's paper).
                if self.mask_rescoring:
                    mask_score_of_query[start : start + len(chunk)] = (logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
                rles_of_query.extend(mask_utils.encode(np.asfortranarray(binary.cpu().numpy().astype(np.uint8).transpose(1, 2, 0))))
            final = (top_scores * mask_score_of_query[position]).cpu().numpy()
            order = np.argsort(-final, kind="stable")
            positions = position.cpu().numpy()[order]
            rles = [{"size": list(rles_of_query[p]["size"]), "counts": rles_of_query[p]["counts"].decode("ascii")} for p in positions.tolist()]
            boxes_xywh = mask_utils.toBbox([rles_of_query[p] for p in positions.tolist()]) if len(order) else np.zeros((0, 4))
            boxes = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4).copy()
            boxes[:, 2:] += boxes[:, :2]
            predictions.append(
                {
                    "image_id": image_id,
                    "rles": rles,
                    "boxes_xyxy_abs": boxes,
                    "scores": final[order].astype(np.float32),
                    "labels": labels.cpu().numpy()[order].astype(np.int64),
                }
            )
        return predictions


class PanopticSegmentationAdapter(MaskClassificationAdapter):
    task = "panoptic_segmentation"
    # A query becomes a segment when its class probability exceeds this (transformers' default) ...
    object_threshold = 0.5
    # ... and keeps this share of its own mask after the arg-max between queries.
    overlap_threshold = 0.8

    def __init__(self, model, processor, image_size: int | None = None):
        super().__init__(model, processor, image_size)
        # Contiguous labels of stuff classes: one segment per class per image. Set by the task.
        self.stuff_labels: set[int] = set()

    def set_stuff_labels(self, labels) -> None:
        self.stuff_labels = {int(v) for v in labels}

    def postprocess(self, outputs, batch: dict) -> list[dict]:
        """-> per image {image_id, segment_map (H, W) int32 of segment ids (0 = no segment) in original
        pixels, segments [{id, label, score}]}."""
        class_logits = outputs.class_queries_logits.float()
        masks_logits = outputs.masks_queries_logits
        padded_hw = batch["pixels_uint8"].shape[-2:]
        predictions = []
        for b, image_id in enumerate(batch["image_ids"].tolist()):
            num_classes = class_logits.shape[2] - 1
            scores, labels = class_logits[b].softmax(-1).max(-1)  # (Q,), (Q,)
            keep = (labels != num_classes) & (scores > self.object_threshold)
            orig_hw = batch["orig_sizes"][b].tolist()
            segment_map = np.zeros(orig_hw, dtype=np.int32)
            segments: list[dict] = []
            if keep.any():
                probs = self._mask_logits_original(masks_logits[b][keep], padded_hw, batch["input_sizes"][b].tolist(), orig_hw).sigmoid()
                kept_scores, kept_labels = scores[keep], labels[keep].tolist()
                owner = (probs * kept_scores[:, None, None]).argmax(0)  # (H, W) query index
                stuff_segment: dict[int, int] = {}
                owner_np = owner.cpu().numpy()
                confident = (probs >= 0.5).cpu().numpy()  # (K, H, W)
                own_area = confident.reshape(len(kept_labels), -1).sum(1)
                for q, label in enumerate(kept_labels):
                    won = owner_np == q
                    region = won & confident[q]
                    area = int(region.sum())
                    # As Mask2Former's reference: a query that lost most of its mask to others is dropped.
                    if area == 0 or own_area[q] == 0 or int(won.sum()) / own_area[q] < self.overlap_threshold:
                        continue
                    if label in self.stuff_labels and label in stuff_segment:
                        segment_map[region] = stuff_segment[label]
                        continue
                    segment_id = len(segments) + 1
                    segment_map[region] = segment_id
                    segments.append({"id": segment_id, "label": int(label), "score": round(float(kept_scores[q]), 6)})
                    if label in self.stuff_labels:
                        stuff_segment[label] = segment_id
            predictions.append({"image_id": image_id, "segment_map": segment_map, "segments": segments})
        return predictions


class SemanticUniversalAdapter(MaskClassificationAdapter):
    """Semantic segmentation with a mask-classification model (Mask2Former's semantic mode): each
    label map becomes one binary mask per class present in the image. IGNORE pixels belong to no
    mask; transformers' loss has no ignore index, so they count as background of every mask (as in
    Mask2Former's reference semantic data mapper)."""

    task = "semantic_segmentation"

    @staticmethod
    def _masks_and_labels(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        label_map = sample.semantic_map  # (h, w) uint8, IGNORE = 255
        labels = np.unique(label_map)
        labels = labels[labels != IGNORE].astype(np.int64)  # (N,)
        masks = (label_map[None] == labels[:, None, None]).astype(np.uint8)  # (N, h, w)
        return masks, labels

    def collate(self, samples: list[Sample]) -> dict:
        batch = super().collate(samples)
        height, width = batch["pixels_uint8"].shape[-2:]
        # The label maps as the other semantic adapters give them, padding IGNORE (not a model input).
        labels = torch.full((len(samples), height, width), IGNORE, dtype=torch.int64)
        for row, s in enumerate(samples):
            labels[row, : s.semantic_map.shape[0], : s.semantic_map.shape[1]] = torch.from_numpy(s.semantic_map.astype(np.int64))
        batch["labels"] = labels  # (B, H, W) int64
        return batch

    def postprocess(self, outputs, batch: dict) -> list[dict]:
        """-> per image {image_id, semantic_map (H, W) uint8 (int32 past 255 classes) at the original
        image size}: class scores per pixel = sum over queries of P(class | query) x P(pixel in the
        query's mask), "no object" left out; arg-max over classes."""
        class_probs = outputs.class_queries_logits.float().softmax(-1)[..., :-1]  # (B, Q, C)
        masks_logits = outputs.masks_queries_logits  # (B, Q, h, w)
        padded_hw = batch["pixels_uint8"].shape[-2:]
        dtype = torch.uint8 if class_probs.shape[-1] <= 255 else torch.int32
        predictions = []
        for b, image_id in enumerate(batch["image_ids"].tolist()):
            orig_hw = batch["orig_sizes"][b].tolist()
            # At the mask resolution, then resized like mask logits (as transformers' semantic post-processing).
            scores = torch.einsum("qc,qhw->chw", class_probs[b], masks_logits[b].float().sigmoid())  # (C, h, w)
            scores = self._mask_logits_original(scores, padded_hw, batch["input_sizes"][b].tolist(), orig_hw)  # (C, H, W)
            predictions.append({"image_id": image_id, "semantic_map": scores.argmax(0).to(dtype).cpu().numpy()})
        return predictions


# -- small random-init configurations (tests, the demo job): fixed 128 x 128 input ------------------
def tiny_mask2former():
    import transformers as T

    swin = T.SwinConfig(image_size=128, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = T.Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=20, train_num_points=256, use_auxiliary_loss=True)
    return config, T.Mask2FormerImageProcessorPil(size={"height": 128, "width": 128}, size_divisor=32, do_reduce_labels=False, ignore_index=255)


def tiny_maskformer():
    import transformers as T

    from cvengine.adapters.detr import tiny_resnet

    detr = T.DetrConfig(backbone_config=tiny_resnet(["stage4"]), d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=20)
    config = T.MaskFormerConfig(backbone_config=tiny_resnet(["stage1", "stage2", "stage3", "stage4"]), decoder_config=detr, fpn_feature_size=32, mask_feature_size=32)
    return config, T.MaskFormerImageProcessorPil(size={"height": 128, "width": 128}, size_divisor=32, do_reduce_labels=False, ignore_index=255)


FAMILIES = [
    Family(model_type, task, adapter, tiny)
    for model_type, tiny in (("mask2former", tiny_mask2former), ("maskformer", tiny_maskformer))
    for task, adapter in (("instance_segmentation", InstanceSegmentationAdapter), ("panoptic_segmentation", PanopticSegmentationAdapter), ("semantic_segmentation", SemanticUniversalAdapter))
]
