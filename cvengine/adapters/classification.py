"""Image classifiers of transformers (`AutoModelForImageClassification`: ViT, DeiT, BEiT, DINOv2,
ResNet, ConvNeXt(V2), Swin, EfficientNet, MobileNetV2, MobileViT) and timm models through
`TimmWrapper`. One label format and one output format for all of them:

  labels:  (B,) int64 class ids, or (B, K) float multi-hot when the config's problem_type is
           "multi_label_classification" (the model's loss is then BCE-with-logits).
  outputs: logits (B, K).

Images are resized and centre-cropped as the checkpoint's image processor does (its resize rule,
resampling filter, crop_pct and crop size) in the loader workers; rescaling, normalisation and any
channel flip happen on the device.
"""
from __future__ import annotations

import functools
import types

import numpy as np
import torch

from cvengine.adapters.base import Adapter, Family
from cvengine.data.dataset import Sample
from cvengine.data.transforms import Normalizer, ResizePolicy, pad_stack

MULTI_LABEL = "multi_label_classification"


def processor_settings(processor):
    """An object with size / image_mean / image_std / rescale settings of any processor: the
    transformers ones have them as attributes; timm's wrapper keeps them in `data_config`."""
    data_config = getattr(processor, "data_config", None)
    if data_config is None:
        return processor
    _, height, width = data_config["input_size"]
    return types.SimpleNamespace(
        size={"height": int(height), "width": int(width)}, do_resize=True, do_center_crop=False, crop_size=None,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(data_config["mean"]), image_std=list(data_config["std"]),
    )


class ImageClassificationAdapter(Adapter):
    """Samples -> model inputs, and logits -> per-image class probabilities."""

    task = "classification"
    auto_model = "AutoModelForImageClassification"
    # DINOv2's mask_token serves masked-image pre-training only.
    unused_parameter_families = frozenset({"dinov2"})

    def __init__(self, model, processor, image_size: int | None = None):
        super().__init__(model, processor, image_size)
        settings = processor_settings(processor)
        # The checkpoint processor's geometry: its resize rule, filter and centre crop (a fixed size
        # for every family served here, so that batches stack without padding).
        self.resize = ResizePolicy.from_processor(settings, image_size)
        self.normalize = Normalizer(settings)
        self.multi_label = getattr(model.config, "problem_type", None) == MULTI_LABEL
        self.num_labels = int(model.config.num_labels)

    # -- in the loader workers ----------------------------------------------------------------------
    def collate(self, samples: list[Sample]) -> dict:
        pixels, _ = pad_stack([s.image for s in samples])
        if self.multi_label:
            # (B, K) multi-hot: every category present in the image.
            labels = torch.zeros((len(samples), self.num_labels), dtype=torch.float32)
            for row, s in enumerate(samples):
                labels[row, torch.from_numpy(np.asarray(s.labels, dtype=np.int64))] = 1.0
        else:
            labels = torch.tensor([int(s.class_label) for s in samples], dtype=torch.int64)
        return {
            "pixels_uint8": pixels,  # (B, 3, S, S) uint8
            "labels": labels,
            "image_ids": torch.tensor([s.image_id for s in samples], dtype=torch.int64),
            "orig_sizes": torch.tensor([s.orig_size for s in samples], dtype=torch.int64),  # (B, 2) H, W
        }

    # -- on the device: the base Adapter's model_inputs (pixel_values, labels) and loss -------------
    def postprocess(self, outputs, batch: dict) -> list[dict]:
        """-> per image {image_id, scores (K,) float32}: softmax probabilities, or independent
        sigmoid probabilities for multi-label models."""
        logits = outputs.logits.float()
        scores = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        scores = scores.cpu().numpy()
        return [{"image_id": image_id, "scores": row, "multi_label": self.multi_label} for image_id, row in zip(batch["image_ids"].tolist(), scores)]

    def backbone_parameter_names(self, model) -> set[str]:
        # Everything but the classification head: the base model (`vit.`, `convnext.`, `timm_model.` …).
        prefix = model.base_model_prefix + "."
        return {name for name, _ in model.named_parameters() if name.startswith(prefix)}


# -- small random-init configurations (tests, the demo job) -----------------------------------------
CLASSIFICATION_SIDE = 64


def tiny_classification(family: str):
    """(config, image processor) of a small random-init classifier of `family`, at 64 px."""
    import transformers as T

    side = CLASSIFICATION_SIDE
    vit_like = dict(image_size=side, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    square = {"height": side, "width": side}
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


_CLASSIFIERS = ("vit", "deit", "beit", "dinov2", "resnet", "convnext", "convnextv2", "swin", "efficientnet", "mobilenet_v2", "mobilevit",
                # timm models through transformers' TimmWrapper (needs `pip install cvengine[timm]`).
                "timm_wrapper")
FAMILIES = [Family(name, "classification", ImageClassificationAdapter, functools.partial(tiny_classification, name)) for name in _CLASSIFIERS]
