"""More semantic segmentation models of transformers served by the generic
`SemanticSegmentationAdapter` (label map in, per-pixel logits out): each needs only its small
random-init configuration here."""
from __future__ import annotations

import functools

from cvengine.adapters.base import Family, own_storage
from cvengine.adapters.semantic import SEMANTIC_SIDE, SemanticSegmentationAdapter

_SIDE = SEMANTIC_SIDE
_SQUARE = {"height": _SIDE, "width": _SIDE}


class SegmenterAdapter(SemanticSegmentationAdapter):
    # Without a gradient in training: data2vec-vision's last encoder layer (the head reads earlier
    # ones), MobileNetV2's final 1x1 convolution (DeepLabV3 reads an earlier stage).
    unused_parameter_families = SemanticSegmentationAdapter.unused_parameter_families | {"data2vec-vision", "mobilenet_v2"}

    def __init__(self, model, processor, image_size: int | None = None):
        super().__init__(model, processor, image_size)
        own_storage(model)  # Sapiens2's MLP gate and up projections are loaded as views of one tensor


def tiny_segmenter(family: str):
    """(config, image processor) of a small random-init semantic segmentation model, at 128 px."""
    import transformers as T

    if family == "data2vec-vision":
        cfg = T.Data2VecVisionConfig(image_size=_SIDE, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                                     out_indices=[0, 1, 2, 3], auxiliary_channels=16, use_auxiliary_head=True, pool_scales=[1, 2, 3, 6])
        return cfg, T.BeitImageProcessorPil(size=_SQUARE, crop_size=_SQUARE, do_center_crop=False, do_reduce_labels=False)
    if family == "mobilenet_v2":
        # DeepLabV3 head on a 0.25-width MobileNetV2.
        cfg = T.MobileNetV2Config(depth_multiplier=0.25, image_size=_SIDE)
        return cfg, T.MobileNetV2ImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "mobilevitv2":
        cfg = T.MobileViTV2Config(image_size=_SIDE, width_multiplier=0.25, aspp_out_channels=16, atrous_rates=[2, 4, 6])
        return cfg, T.MobileViTImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "sapiens2":
        cfg = T.Sapiens2Config(image_size=_SIDE, patch_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_register_tokens=0,
                               head_config={"upsample_out_channels": [16, 16], "conv_out_channels": [16]})
        # Sapiens2's own processor needs torchvision; the SegFormer one resizes to the same fixed size.
        return cfg, T.SegformerImageProcessorPil(size=_SQUARE, do_reduce_labels=False)
    raise KeyError(family)


FAMILIES = [Family(name, "semantic_segmentation", SegmenterAdapter, functools.partial(tiny_segmenter, name)) for name in ("data2vec-vision", "mobilenet_v2", "mobilevitv2", "sapiens2")]
