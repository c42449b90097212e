"""DETR-line models with a mask head, trained with DETR's set loss over boxes AND masks: DETR's
panoptic model (`DetrForSegmentation`) for panoptic, instance and semantic segmentation; RF-DETR's
segmentation model uses the same targets (see lw_detr.py).

  labels (the model's `labels` argument):  per image {"class_labels": (N,) int64, "boxes": (N, 4) cxcywh of each mask's tight box,
           normalised by the unpadded input size, "masks": (N, H, W) float 0/1 at the PADDED input
           size}
  outputs: logits (B, Q, C[+1]), pred_boxes (B, Q, 4), pred_masks (B, Q, h, w) over the padded
           input. Post-processing is the mask-classification one (mask_classification.py), fed
           with `logits` / `pred_masks`.
"""
from __future__ import annotations

import types

import numpy as np
import torch

from cvengine.adapters.base import Family
from cvengine.adapters.detr import DetrFamilyAdapter, tiny_resnet
from cvengine.adapters.mask_classification import InstanceSegmentationAdapter, PanopticSegmentationAdapter, SemanticUniversalAdapter
from cvengine.data.dataset import Sample, boxes_from_masks


class DetrMaskTargets:
    """Mixed into a mask-classification adapter: DETR-style targets with masks, DETR's loss parts."""

    def __init__(self, model, processor, image_size: int | None = None):
        super().__init__(model, processor, image_size)
        # The DETR line's processors pad only to the largest image of the batch (RF-DETR's windowed
        # ViT needs sides divisible by patch size x windows, which its processor's size already is).
        self.pad_multiple = int(getattr(processor, "size_divisor", None) or 1)

    def collate(self, samples: list[Sample]) -> dict:
        batch = super().collate(samples)
        labels = []
        for masks, classes, (h, w) in zip(batch["mask_labels"], batch["class_labels"], batch["input_sizes"].tolist()):
            xyxy = boxes_from_masks(masks[:, :h, :w].numpy())  # (N, 4) pixels of the resized image
            cxcywh = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2 / w, (xyxy[:, 1] + xyxy[:, 3]) / 2 / h, (xyxy[:, 2] - xyxy[:, 0]) / w, (xyxy[:, 3] - xyxy[:, 1]) / h], axis=1)
            labels.append({"class_labels": classes, "boxes": torch.from_numpy(cxcywh.astype(np.float32)).reshape(-1, 4), "masks": masks})
        batch["detr_targets"] = labels  # not "labels": the semantic adapters keep their label maps there
        return batch

    def model_inputs(self, batch: dict, with_labels: bool = True) -> dict:
        inputs = super().model_inputs(batch, with_labels=False)
        if with_labels:
            device = inputs["pixel_values"].device
            inputs["labels"] = [{k: v.to(device) for k, v in target.items()} for target in batch["detr_targets"]]
        return inputs

    loss = staticmethod(DetrFamilyAdapter.loss)


class DetrPanopticOutputs(DetrMaskTargets):
    """DETR's panoptic model: softmax classes with a trailing "no object", as Mask2Former's."""

    auto_model = "AutoModelForUniversalSegmentation"
    backbone_prefixes = ("detr.model.backbone.",)

    def postprocess(self, outputs, batch: dict) -> list[dict]:
        renamed = types.SimpleNamespace(class_queries_logits=outputs.logits, masks_queries_logits=outputs.pred_masks)
        return super().postprocess(renamed, batch)


class DetrInstanceAdapter(DetrPanopticOutputs, InstanceSegmentationAdapter):
    pass


class DetrPanopticAdapter(DetrPanopticOutputs, PanopticSegmentationAdapter):
    pass


class DetrSemanticAdapter(DetrPanopticOutputs, SemanticUniversalAdapter):
    pass


def tiny_detr_segmentation():
    import transformers as T

    # The mask head takes d_model + encoder heads channels, which must divide by 8. Stages 1-3: the
    # transformer reads stride 16 (stage 3), which a tiny DETR learns far faster than stride 32. No
    # dropout: at 32 channels DETR's 0.1 keeps a tiny model from memorising a few images (segm
    # mAP@0.5 0.25 instead of 0.85 after 200 steps on the demo, raw loop, lr 3e-3).
    config = T.DetrConfig(backbone_config=tiny_resnet(["stage1", "stage2", "stage3"]), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=8, decoder_attention_heads=2,
                          encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=20, dropout=0.0, architectures=["DetrForSegmentation"])
    return config, T.DetrImageProcessorPil(size={"height": 128, "width": 128}, format="coco_panoptic")


FAMILIES = [
    Family("detr", task, adapter, tiny_detr_segmentation)
    for task, adapter in (("instance_segmentation", DetrInstanceAdapter), ("panoptic_segmentation", DetrPanopticAdapter), ("semantic_segmentation", DetrSemanticAdapter))
]
