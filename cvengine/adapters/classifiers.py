"""More image classifiers of transformers, served by the generic classification adapter (with the
backbone found by shape, below): each needs only its small random-init configuration here (the
adapter reads size and normalisation from the checkpoint's image processor). Vision towers of image-text models (CLIP, SigLIP, MetaCLIP 2)
train as plain classifiers: their `*ForImageClassification` heads pool the vision tower alone.
"""
from __future__ import annotations

import functools

from cvengine.adapters.base import Family
from cvengine.adapters.classification import CLASSIFICATION_SIDE, ImageClassificationAdapter


class AnyBackboneClassificationAdapter(ImageClassificationAdapter):
    """The backbone is everything but the classification head, found as the tensors whose shape
    follows the number of classes: the base-model prefix does not separate them in every family
    (CLIP-like models keep their tower at `vision_model.`, Perceiver its decoder inside `perceiver.`)."""

    # Without a gradient in training: the vision tower's post_layernorm of CLIP-like models (the head
    # pools before it), DINOv2-with-registers' mask token.
    unused_parameter_families = frozenset({"clip", "metaclip_2", "siglip", "dinov2_with_registers"})

    def backbone_parameter_names(self, model) -> set[str]:
        import copy

        import torch

        config = copy.deepcopy(model.config)
        config.num_labels = model.config.num_labels + 1
        with torch.device("meta"):
            other = dict(type(model)(config).named_parameters())
        return {name for name, p in model.named_parameters() if name in other and other[name].shape == p.shape}


class LevitClassificationAdapter(AnyBackboneClassificationAdapter):
    """LeViT's processor resizes the shortest edge to int(256 / 224 x size.shortest_edge), then
    centre-crops to crop_size: the same rule with the scaled edge."""

    def __init__(self, model, processor, image_size: int | None = None):
        import copy

        from cvengine.data.transforms import ResizePolicy

        # The parent applies (and writes back) a data.image_size override first.
        super().__init__(model, processor, image_size)
        size = processor.size
        shortest = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
        if shortest:
            scaled = copy.copy(processor)
            scaled.size = {"shortest_edge": int((256 / 224) * shortest)}
            self.resize = ResizePolicy.from_processor(scaled)


_SIDE = CLASSIFICATION_SIDE
_SQUARE = {"height": _SIDE, "width": _SIDE}
_VIT = dict(image_size=_SIDE, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _text_vision(config_class, text_class, vision_class):
    """An image-text config whose text tower is as small as it gets (only the vision tower is used)."""
    text = text_class(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16)
    vision = vision_class(**_VIT)
    return config_class(text_config=text.to_dict(), vision_config=vision.to_dict())


def tiny_classifier(family: str):
    """(config, image processor) of a small random-init classifier of `family`, at 64 px."""
    import transformers as T

    # The PIL processors throughout: the core works without torchvision.
    if family == "bit":
        return T.BitConfig(embedding_size=16, hidden_sizes=[32, 32, 64, 64], depths=[1, 1, 1, 1], layer_type="preactivation", num_groups=4), T.BitImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "cvt":
        # depth[i] > i: the stage-i drop-path schedule is indexed by the stage number.
        cfg = T.CvtConfig(embed_dim=[16, 32, 32], num_heads=[1, 2, 2], depth=[1, 2, 3])
        return cfg, T.ConvNextImageProcessorPil(size={"shortest_edge": _SIDE}, crop_pct=1.0)
    if family == "data2vec-vision":
        return T.Data2VecVisionConfig(**_VIT, use_mean_pooling=True), T.BeitImageProcessorPil(size=_SQUARE, crop_size=_SQUARE, do_center_crop=False)
    if family == "dinov2_with_registers":
        cfg = T.Dinov2WithRegistersConfig(image_size=_SIDE, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, num_register_tokens=2)
        return cfg, T.BitImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "donut-swin":
        cfg = T.DonutSwinConfig(image_size=_SIDE, patch_size=4, embed_dim=16, depths=[1, 1, 1], num_heads=[1, 2, 2], window_size=4)
        return cfg, T.ViTImageProcessorPil(size=_SQUARE)
    if family == "focalnet":
        return T.FocalNetConfig(image_size=_SIDE, embed_dim=16, depths=[1, 1, 1], focal_levels=[2, 2, 2]), T.BitImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "hgnet_v2":
        cfg = T.HGNetV2Config(stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 64], stage_mid_channels=[8, 8, 16, 16], stage_out_channels=[16, 32, 64, 128], stage_num_blocks=[1] * 4, stage_numb_of_layers=[1] * 4, hidden_sizes=[16, 32, 64, 128], depths=[1] * 4)
        return cfg, T.ViTImageProcessorPil(size=_SQUARE)
    if family == "hiera":
        cfg = T.HieraConfig(image_size=[_SIDE, _SIDE], patch_size=[7, 7], patch_stride=[4, 4], patch_padding=[3, 3], embed_dim=16, num_heads=[1, 2, 2, 2], depths=[1, 1, 1, 1], query_stride=[2, 2], masked_unit_size=[8, 8])
        return cfg, T.BitImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "ijepa":
        return T.IJepaConfig(**_VIT), T.ViTImageProcessorPil(size=_SQUARE)
    if family == "levit":
        cfg = T.LevitConfig(image_size=_SIDE, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3], depths=[1, 1, 1], key_dim=[8, 8, 8], down_ops=[["Subsample", 8, 1, 4, 2, 2], ["Subsample", 8, 2, 4, 2, 2]], architectures=["LevitForImageClassification"])
        return cfg, T.LevitImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "mobilenet_v1":
        return T.MobileNetV1Config(depth_multiplier=0.25, image_size=_SIDE), T.MobileNetV1ImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "mobilevitv2":
        return T.MobileViTV2Config(image_size=_SIDE, width_multiplier=0.25), T.MobileViTImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "poolformer":
        cfg = T.PoolFormerConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])
        return cfg, T.PoolFormerImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE, crop_pct=1.0)
    if family == "pvt":
        cfg = T.PvtConfig(image_size=_SIDE, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2], sequence_reduction_ratios=[4, 2, 1, 1])
        return cfg, T.PvtImageProcessorPil(size=_SQUARE)
    if family == "pvt_v2":
        return T.PvtV2Config(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2]), T.PvtImageProcessorPil(size=_SQUARE)
    if family == "regnet":
        return T.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], groups_width=8), T.ConvNextImageProcessorPil(size={"shortest_edge": _SIDE}, crop_pct=1.0)
    if family == "segformer":
        cfg = T.SegformerConfig(hidden_sizes=[8, 16, 32, 64], depths=[1] * 4, num_attention_heads=[1, 1, 2, 2])
        return cfg, T.SegformerImageProcessorPil(size=_SQUARE)
    if family == "swiftformer":
        return T.SwiftFormerConfig(image_size=_SIDE, embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1]), T.ViTImageProcessorPil(size=_SQUARE)
    if family == "swinv2":
        cfg = T.Swinv2Config(image_size=_SIDE, patch_size=4, embed_dim=16, depths=[1, 1, 1], num_heads=[1, 2, 2], window_size=4)
        return cfg, T.ViTImageProcessorPil(size=_SQUARE)
    if family == "textnet":
        return T.TextNetConfig(stem_out_channels=8, hidden_sizes=[8, 8, 16, 32, 64]), T.TextNetImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE, do_center_crop=True)
    if family == "vit_msn":
        return T.ViTMSNConfig(**_VIT), T.ViTImageProcessorPil(size=_SQUARE)
    if family == "clip":
        return _text_vision(T.CLIPConfig, T.CLIPTextConfig, T.CLIPVisionConfig), T.CLIPImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "metaclip_2":
        return _text_vision(T.MetaClip2Config, T.MetaClip2TextConfig, T.MetaClip2VisionConfig), T.CLIPImageProcessorPil(size={"shortest_edge": _SIDE}, crop_size=_SQUARE)
    if family == "siglip":
        return _text_vision(T.SiglipConfig, T.SiglipTextConfig, T.SiglipVisionConfig), T.SiglipImageProcessorPil(size=_SQUARE)
    if family == "perceiver":
        cfg = T.PerceiverConfig(num_latents=8, d_latents=32, d_model=32, num_blocks=1, num_self_attends_per_block=1, num_self_attention_heads=2, num_cross_attention_heads=1, image_size=_SIDE, architectures=["PerceiverForImageClassificationLearned"])
        return cfg, T.PerceiverImageProcessorPil(size=_SQUARE, crop_size=_SQUARE, do_center_crop=False)
    raise KeyError(family)


_CLASSIFIERS = ("bit", "cvt", "data2vec-vision", "dinov2_with_registers", "donut-swin", "focalnet", "hgnet_v2", "hiera", "ijepa", "levit", "mobilenet_v1", "mobilevitv2",
                "poolformer", "pvt", "pvt_v2", "regnet", "segformer", "swiftformer", "swinv2", "textnet", "vit_msn", "clip", "metaclip_2", "siglip", "perceiver")
# siglip2 is refused (see refused.py): its NaFlex inputs are patch sequences, not an image batch.
FAMILIES = [Family(name, "classification", LevitClassificationAdapter if name == "levit" else AnyBackboneClassificationAdapter, functools.partial(tiny_classifier, name)) for name in _CLASSIFIERS]
