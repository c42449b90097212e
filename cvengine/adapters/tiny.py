"""Small randomly initialised configurations per family, for training from scratch on small images,
for the demo job and for tests. Written as a normal checkpoint folder (config.json +
preprocessor_config.json), so they load through the same `from_pretrained` path as a hub id."""
from __future__ import annotations

from pathlib import Path

from cvengine.adapters.tiny_tasks import tiny_classification, tiny_semantic


def _tiny_resnet(out_features):
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic", out_features=out_features)


_DETR_COMMON = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=20)
_SHORT_EDGE = {"shortest_edge": 128, "longest_edge": 192}


def _detection(family: str):
    import transformers as T

    if family == "detr":
        return T.DetrConfig(backbone_config=_tiny_resnet(["stage3"]), **_DETR_COMMON), T.DetrImageProcessorPil(size=_SHORT_EDGE)
    if family == "conditional_detr":
        return T.ConditionalDetrConfig(backbone_config=_tiny_resnet(["stage3"]), **_DETR_COMMON), T.ConditionalDetrImageProcessorPil(size=_SHORT_EDGE)
    if family == "deformable_detr":
        cfg = T.DeformableDetrConfig(backbone_config=_tiny_resnet(["stage2", "stage3", "stage4"]), num_feature_levels=3, encoder_n_points=2, decoder_n_points=2, **{**_DETR_COMMON, "decoder_layers": 2})
        return cfg, T.DeformableDetrImageProcessorPil(size=_SHORT_EDGE)
    if family == "dab-detr":
        common = {k: v for k, v in _DETR_COMMON.items() if k != "d_model"}
        return T.DabDetrConfig(backbone_config=_tiny_resnet(["stage3"]), hidden_size=32, **common), T.ConditionalDetrImageProcessorPil(size=_SHORT_EDGE)
    if family == "yolos":
        cfg = T.YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=[128, 192], patch_size=16, num_detection_tokens=20)
        return cfg, T.YolosImageProcessorPil(size=_SHORT_EDGE)
    if family in ("rt_detr", "rt_detr_v2"):
        backbone = T.RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic", out_features=["stage2", "stage3", "stage4"])
        args = dict(backbone_config=backbone, encoder_in_channels=[16, 32, 64], encoder_hidden_dim=32, encoder_ffn_dim=64, encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64, decoder_attention_heads=2, num_queries=20, num_denoising=5)
        if family == "rt_detr":
            cfg = T.RTDetrConfig(decoder_layers=1, **args)
        else:
            cfg = T.RTDetrV2Config(decoder_layers=2, **args)
        return cfg, T.RTDetrImageProcessorPil(size={"height": 128, "width": 128})
    if family == "d_fine":
        backbone = T.HGNetV2Config(stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 64], stage_mid_channels=[8, 8, 16, 16], stage_out_channels=[16, 32, 64, 128], stage_num_blocks=[1] * 4, stage_numb_of_layers=[1] * 4, hidden_sizes=[16, 32, 64, 128], depths=[1] * 4, out_features=["stage2", "stage3", "stage4"])
        cfg = T.DFineConfig(backbone_config=backbone, encoder_in_channels=[32, 64, 128], encoder_hidden_dim=32, encoder_ffn_dim=64, encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64, decoder_attention_heads=2, decoder_layers=2, decoder_n_points=[3, 6, 3], num_queries=20, num_denoising=5, depth_mult=0.34, hidden_expansion=0.5)
        return cfg, T.RTDetrImageProcessorPil(size={"height": 128, "width": 128})
    raise KeyError(family)


def _mask_classification(family: str):
    """Mask2Former / MaskFormer for instance and panoptic segmentation, at a fixed 128x128 input."""
    import transformers as T

    size = {"height": 128, "width": 128}
    if family == "mask2former":
        swin = T.SwinConfig(image_size=128, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
        cfg = T.Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=20, train_num_points=256, use_auxiliary_loss=True)
        return cfg, T.Mask2FormerImageProcessorPil(size=size, size_divisor=32, do_reduce_labels=False, ignore_index=255)
    if family == "maskformer":
        detr = T.DetrConfig(backbone_config=_tiny_resnet(["stage4"]), **{**_DETR_COMMON, "decoder_layers": 2})
        cfg = T.MaskFormerConfig(backbone_config=_tiny_resnet(["stage1", "stage2", "stage3", "stage4"]), decoder_config=detr, fpn_feature_size=32, mask_feature_size=32)
        return cfg, T.MaskFormerImageProcessorPil(size=size, size_divisor=32, do_reduce_labels=False, ignore_index=255)
    if family == "oneformer":
        from cvengine.adapters.oneformer import tiny_oneformer

        return tiny_oneformer(side=128)
    raise KeyError(family)


def _semantic(family: str):
    """The semantic families; Mask2Former / MaskFormer as for instance and panoptic segmentation."""
    if family in ("mask2former", "maskformer", "oneformer"):
        return _mask_classification(family)
    return tiny_semantic(family)


TINY_BUILDERS = {
    "detection": _detection,
    "instance_segmentation": _mask_classification,
    "panoptic_segmentation": _mask_classification,
    "classification": tiny_classification,
    "semantic_segmentation": _semantic,
}


def create_tiny(task: str, family: str, out_dir: str | Path, num_labels: int = 10) -> Path:
    """Write a random-init `family` checkpoint folder for `task` at `out_dir` (config, weights,
    processor) and return the folder."""
    import torch
    from transformers import AutoModelForObjectDetection

    from cvengine.errors import RecipeError

    if task not in TINY_BUILDERS:
        raise RecipeError(f"no small configurations for task '{task}' yet; available: {', '.join(TINY_BUILDERS)}")
    try:
        config, processor = TINY_BUILDERS[task](family)
    except KeyError:
        from cvengine.adapters import supported_families

        raise RecipeError(f"no small configuration for '{family}'; families: {', '.join(supported_families(task))}") from None
    config.num_labels = num_labels
    if hasattr(config, "use_pretrained_backbone"):
        config.use_pretrained_backbone = False
    torch.manual_seed(0)
    from transformers import AutoModelForUniversalSegmentation

    auto_classes = {"detection": AutoModelForObjectDetection, "instance_segmentation": AutoModelForUniversalSegmentation, "panoptic_segmentation": AutoModelForUniversalSegmentation}
    from transformers import AutoModelForImageClassification

    from cvengine.adapters import _auto_model_class

    auto_classes.update(classification=AutoModelForImageClassification, semantic_segmentation=_auto_model_class("semantic_segmentation"))
    model = auto_classes[task].from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
