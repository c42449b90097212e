"""EoMT (Encoder-only Mask Transformer: a plain ViT whose last blocks also carry the queries, with
masked attention annealed away in training) and its DINOv3 variant, for instance, panoptic and
semantic segmentation. Labels and outputs are Mask2Former's (see mask_classification.py); what
differs is the input:

  pixel_values (B, 3, S, S): the ViT's grid is fixed at config.image_size // patch_size, so every
  image is resized to fit S = config.image_size (long side S, as EoMT's processor with
  shortest_edge = longest_edge = S) and padded bottom/right to S x S. The processor pads BEFORE
  normalising (padding = normalised black), unlike the DETR line; no pixel_mask.
"""
from __future__ import annotations

from cvengine.adapters.base import Family
from cvengine.adapters.mask_classification import InstanceSegmentationAdapter, PanopticSegmentationAdapter, SemanticUniversalAdapter
from cvengine.errors import RecipeError


class EomtInputs:
    """Mixed into the mask-classification adapters: fixed S x S canvas, padding normalised like pixels."""

    backbone_prefixes = ("embeddings.", "layers.")

    def __init__(self, model, processor, image_size: int | None = None):
        side = int(model.config.image_size)
        if image_size is not None and int(image_size) != side:
            raise RecipeError(f"model.image_size = {image_size}: EoMT models take exactly their config's image_size ({side} px); remove the key or set it to {side}")
        super().__init__(model, processor, image_size)
        # Resized images are at most S x S: padding to a multiple of S gives exactly S x S.
        self.pad_multiple = side

    def model_inputs(self, batch: dict, with_labels: bool = True) -> dict:
        inputs = super().model_inputs(batch, with_labels)
        inputs["pixel_values"] = self.normalize(batch["pixels_uint8"])
        return inputs


class EomtInstanceAdapter(EomtInputs, InstanceSegmentationAdapter):
    pass


class EomtPanopticAdapter(EomtInputs, PanopticSegmentationAdapter):
    pass


class EomtSemanticAdapter(EomtInputs, SemanticUniversalAdapter):
    pass


# -- small random-init configurations (tests, the demo job): 128 x 128 canvas -----------------------
_SIDE = 128
_VIT = dict(image_size=_SIDE, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_blocks=2, num_queries=20, num_register_tokens=1, train_num_points=256)


def _processor():
    import transformers as T

    return T.EomtImageProcessorPil(size={"shortest_edge": _SIDE, "longest_edge": _SIDE}, do_pad=True)


def tiny_eomt():
    import transformers as T

    return T.EomtConfig(mlp_ratio=2, **_VIT), _processor()


def tiny_eomt_dinov3():
    import transformers as T

    return T.EomtDinov3Config(intermediate_size=64, **_VIT), _processor()


FAMILIES = [
    Family(model_type, task, adapter, tiny)
    for model_type, tiny in (("eomt", tiny_eomt), ("eomt_dinov3", tiny_eomt_dinov3))
    for task, adapter in (("instance_segmentation", EomtInstanceAdapter), ("panoptic_segmentation", EomtPanopticAdapter), ("semantic_segmentation", EomtSemanticAdapter))
]
