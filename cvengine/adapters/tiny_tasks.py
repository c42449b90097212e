"""Small random-init configurations of the classification and semantic segmentation families (see
`cvengine.adapters.tiny`): (config, image processor) per family, sized for small images."""
from __future__ import annotations

CLASSIFICATION_SIDE = 64
SEMANTIC_SIDE = 128


def _square(side: int) -> dict:
    return {"height": side, "width": side}


def tiny_classification(family: str):
    import transformers as T

    side = CLASSIFICATION_SIDE
    vit_like = dict(image_size=side, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    square = _square(side)
    if family == "vit":
        return T.ViTConfig(**vit_like), T.ViTImageProcessorPil(size=square)
    if family == "deit":
        # Two head classes map to deit; the one with a classification loss is named explicitly.
        return T.DeiTConfig(**vit_like, architectures=["DeiTForImageClassification"]), T.DeiTImageProcessorPil(size=square, crop_size=square)
    if family == "beit":
        return T.BeitConfig(**vit_like, use_mean_pooling=True), T.BeitImageProcessorPil(size=square, crop_size=square, do_center_crop=False)
    if family == "dinov2":
        cfg = T.Dinov2Config(image_size=side, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2)
        return cfg, T.BitImageProcessorPil(size={"shortest_edge": side}, crop_size=square)
    if family == "resnet":
        cfg = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic")
        return cfg, T.ConvNextImageProcessorPil(size={"shortest_edge": side})
    if family == "convnext":
        return T.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]), T.ConvNextImageProcessorPil(size={"shortest_edge": side})
    if family == "convnextv2":
        return T.ConvNextV2Config(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]), T.ConvNextImageProcessorPil(size={"shortest_edge": side})
    if family == "swin":
        cfg = T.SwinConfig(image_size=side, patch_size=4, embed_dim=16, depths=[1, 1, 1], num_heads=[1, 2, 2], window_size=4)
        return cfg, T.ViTImageProcessorPil(size=square)
    if family == "efficientnet":
        # hidden_dim must equal round_filters(1280) at this width: 320 at 0.25.
        cfg = T.EfficientNetConfig(image_size=side, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320)
        return cfg, T.EfficientNetImageProcessorPil(size=square)
    if family == "mobilenet_v2":
        return T.MobileNetV2Config(depth_multiplier=0.25, image_size=side), T.MobileNetV2ImageProcessorPil(size={"shortest_edge": side}, crop_size=square)
    if family == "mobilevit":
        cfg = T.MobileViTConfig(image_size=side, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 64], num_attention_heads=2)
        return cfg, T.MobileViTImageProcessorPil(size={"shortest_edge": side}, crop_size=square)
    if family == "timm_wrapper":
        # Needs timm (which needs torchvision); the processor settings live in pretrained_cfg.
        cfg = T.TimmWrapperConfig(architecture="test_resnet", pretrained_cfg={"input_size": [3, side, side], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0, "num_classes": 10})
        return cfg, T.TimmWrapperImageProcessor(pretrained_cfg=cfg.pretrained_cfg, architecture="test_resnet")
    raise KeyError(family)


def tiny_semantic(family: str):
    import transformers as T

    side = SEMANTIC_SIDE
    square = _square(side)
    if family == "segformer":
        # Wider than the smallest working SegFormer: thin digit strokes are learned ~2x faster.
        cfg = T.SegformerConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=64)
        return cfg, T.SegformerImageProcessorPil(size=square, do_reduce_labels=False)
    if family == "upernet":
        backbone = T.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"])
        cfg = T.UperNetConfig(backbone_config=backbone, hidden_size=32, auxiliary_channels=16, auxiliary_in_channels=32)
        return cfg, T.SegformerImageProcessorPil(size=square, do_reduce_labels=False)
    if family == "dpt":
        cfg = T.DPTConfig(image_size=side, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                          backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 64], fusion_hidden_size=16)
        return cfg, T.DPTImageProcessorPil(size=square, keep_aspect_ratio=False)
    if family == "mobilevit":
        cfg = T.MobileViTConfig(image_size=side, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 64], num_attention_heads=2, aspp_out_channels=16, atrous_rates=[2, 4, 6])
        return cfg, T.MobileViTImageProcessorPil(size={"shortest_edge": side}, crop_size=square)
    if family == "beit":
        cfg = T.BeitConfig(image_size=side, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                           out_indices=[0, 1, 2, 3], auxiliary_channels=16, use_auxiliary_head=True)
        return cfg, T.BeitImageProcessorPil(size=square, crop_size=square, do_center_crop=False, do_reduce_labels=False)
    raise KeyError(family)
