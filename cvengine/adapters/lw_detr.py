"""LW-DETR and RF-DETR: a plain ViT (LW-DETR: CAE-pretrained; RF-DETR: DINOv2 with windowed
attention) feeding a multi-scale projector and a deformable-attention decoder trained with group
DETR (13 query groups in training, 1 at inference). Detection uses the DETR line's label format and
sigmoid top-k post-processing (`DetrFamilyAdapter`); RF-DETR's segmentation head adds one mask per
query:

  labels:  DETR-style targets with masks (detr_segmentation.py). Masks stay at the PADDED input
           size: the loss samples points with normalised coordinates on both the target masks
           and `pred_masks`, which cover the padded input.
  outputs: logits (B, Q, C) (sigmoid, no "no object" class), pred_boxes (B, Q, 4),
           pred_masks (B, Q, H/4, W/4) at a quarter of the padded input.
"""
from __future__ import annotations

import torch

from cvengine.adapters.base import Family, own_storage
from cvengine.adapters.detr import DetrFamilyAdapter
from cvengine.adapters.detr_segmentation import DetrMaskTargets
from cvengine.adapters.mask_classification import InstanceSegmentationAdapter


class LwDetrAdapter(DetrFamilyAdapter):
    # The ViT encoder only: its projector (`model.backbone.projector.`) trains at the full lr, as in
    # LW-DETR's and RF-DETR's reference `lr_encoder`.
    backbone_prefixes = ("model.backbone.backbone.",)
    # RF-DETR's DINOv2 backbone keeps a mask token that training never uses.
    unused_parameter_families = frozenset({"rf_detr"})

    def __init__(self, model, processor, image_size: int | None = None):
        super().__init__(model, processor, image_size)
        own_storage(model)


class RfDetrInstanceAdapter(DetrMaskTargets, InstanceSegmentationAdapter):
    """Samples -> RF-DETR segmentation inputs; outputs -> instance predictions ranked by the sigmoid
    class score alone (RF-DETR's own post-processing: no mask rescoring)."""

    auto_model = "AutoModelForInstanceSegmentation"
    # The detector sits at `model.` inside the segmentation model.
    backbone_prefixes = ("model.model.backbone.backbone.",)
    mask_rescoring = False
    unused_parameter_families = LwDetrAdapter.unused_parameter_families

    def __init__(self, model, processor, image_size: int | None = None):
        super().__init__(model, processor, image_size)
        own_storage(model)

    @staticmethod
    def query_outputs(outputs) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs.logits.float().sigmoid(), outputs.pred_masks


# -- small random-init configurations (tests, the demo job): fixed 128 x 128 input ------------------
_DECODER = dict(d_model=32, decoder_ffn_dim=64, decoder_layers=2, decoder_self_attention_heads=2, decoder_cross_attention_heads=2, num_queries=20, group_detr=2)


def _processor():
    import transformers as T

    # RF-DETR's own processor needs torchvision; the Deformable DETR one resizes, normalises and
    # post-processes boxes the same way (sigmoid top-k).
    return T.DeformableDetrImageProcessorPil(size={"height": 128, "width": 128})


def tiny_rf_detr():
    import transformers as T
    from transformers.models.rf_detr.configuration_rf_detr import RfDetrDinov2Config

    backbone = RfDetrDinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=128, patch_size=16, num_windows=2, num_register_tokens=0, out_features=["stage1", "stage2", "stage3", "stage4"])
    return T.RfDetrConfig(backbone_config=backbone, intermediate_size=32, **_DECODER), _processor()


def tiny_lw_detr():
    import transformers as T
    from transformers.models.lw_detr.configuration_lw_detr import LwDetrViTConfig

    backbone = LwDetrViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=128, pretrain_image_size=128, patch_size=16, window_block_indices=[0, 2], num_windows=4, out_indices=[1, 2, 3, 4])
    return T.LwDetrConfig(backbone_config=backbone, projector_scale_factors=[1.0], **_DECODER), _processor()


FAMILIES = [
    Family("lw_detr", "detection", LwDetrAdapter, tiny_lw_detr),
    Family("rf_detr", "detection", LwDetrAdapter, tiny_rf_detr),
    Family("rf_detr", "instance_segmentation", RfDetrInstanceAdapter, tiny_rf_detr),
]
