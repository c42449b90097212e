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

from cvengine.adapters.base import Adapter, Family
from cvengine.data.dataset import Sample
from cvengine.data.transforms import Normalizer, ResizePolicy, pad_stack, resize_on_device

# COCO keeps at most 100 detections per image; no score threshold before metrics.
MAX_DETECTIONS = 100


def detr_targets(sample: Sample) -> dict:
    """{"class_labels": (N,) int64, "boxes": (N, 4) float32 cxcywh normalised by the sample's image size}."""
    h, w = sample.image.shape[:2]
    b = sample.boxes_xyxy_abs
    cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h, (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], axis=1) if len(b) else np.zeros((0, 4), np.float32)
    return {"class_labels": torch.from_numpy(sample.labels.astype(np.int64)), "boxes": torch.from_numpy(cxcywh.astype(np.float32))}


class DetrFamilyAdapter(Adapter):
    """Samples -> model inputs, and model outputs -> predictions in ORIGINAL-image pixels."""

    task = "detection"
    auto_model = "AutoModelForObjectDetection"
    # Their first decoder layer has a query_scale module that the layer does not apply.
    unused_parameter_families = frozenset({"conditional_detr", "dab-detr"})
    # The CNN backbone of the DETR line; DEIMv2's backbone (HGNetV2 or DINOv3); YOLOS's whole ViT.
    backbone_prefixes = ("model.backbone.", "model.conv_encoder.model.", "vit.")
    # model_inputs resizes images of any size to their input size (data.decode on the device needs it).
    resizes_on_device = True

    def __init__(self, model, processor, image_size: int | None = None):
        super().__init__(model, processor, image_size)
        self.resize = ResizePolicy.from_processor(processor, image_size, defer_above=1.0, crop=False)
        self.normalize = Normalizer(processor)
        self.pad_multiple = int(getattr(processor, "size_divisor", None) or 1)
        self.accepts_pixel_mask = "pixel_mask" in inspect.signature(model.forward).parameters

    # -- in the loader workers ----------------------------------------------------------------------
    def collate(self, samples: list[Sample]) -> dict:
        image_sizes = [tuple(s.image.shape[:2]) for s in samples]
        input_sizes = [self.resize.input_hw(h, w) for h, w in image_sizes]
        pixels, pixel_mask = pad_stack([s.image for s in samples], self.pad_multiple)
        labels = [detr_targets(s) for s in samples]
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


# -- small random-init configurations (tests, the demo job) -----------------------------------------
def tiny_resnet(out_features):
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic", out_features=out_features)


_DETR_COMMON = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=20)
_SHORT_EDGE = {"shortest_edge": 128, "longest_edge": 192}


def tiny_detr():
    import transformers as T

    return T.DetrConfig(backbone_config=tiny_resnet(["stage3"]), **_DETR_COMMON), T.DetrImageProcessorPil(size=_SHORT_EDGE)


def tiny_conditional_detr():
    import transformers as T

    return T.ConditionalDetrConfig(backbone_config=tiny_resnet(["stage3"]), **_DETR_COMMON), T.ConditionalDetrImageProcessorPil(size=_SHORT_EDGE)


def tiny_deformable_detr():
    import transformers as T

    # decoder_layers >= 2: the box refinement ties weights across layers.
    config = T.DeformableDetrConfig(backbone_config=tiny_resnet(["stage2", "stage3", "stage4"]), num_feature_levels=3, encoder_n_points=2, decoder_n_points=2, **{**_DETR_COMMON, "decoder_layers": 2})
    return config, T.DeformableDetrImageProcessorPil(size=_SHORT_EDGE)


def tiny_dab_detr():
    import transformers as T

    common = {k: v for k, v in _DETR_COMMON.items() if k != "d_model"}
    return T.DabDetrConfig(backbone_config=tiny_resnet(["stage3"]), hidden_size=32, **common), T.ConditionalDetrImageProcessorPil(size=_SHORT_EDGE)


def tiny_yolos():
    import transformers as T

    config = T.YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=[128, 192], patch_size=16, num_detection_tokens=20)
    return config, T.YolosImageProcessorPil(size=_SHORT_EDGE)


_RT_DETR_COMMON = dict(encoder_hidden_dim=32, encoder_ffn_dim=64, encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64, decoder_attention_heads=2, num_queries=20, num_denoising=5)


def _tiny_rt_detr_backbone():
    import transformers as T

    return T.RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic", out_features=["stage2", "stage3", "stage4"])


def tiny_rt_detr():
    import transformers as T

    config = T.RTDetrConfig(backbone_config=_tiny_rt_detr_backbone(), encoder_in_channels=[16, 32, 64], decoder_layers=1, **_RT_DETR_COMMON)
    return config, T.RTDetrImageProcessorPil(size={"height": 128, "width": 128})


def tiny_rt_detr_v2():
    import transformers as T

    config = T.RTDetrV2Config(backbone_config=_tiny_rt_detr_backbone(), encoder_in_channels=[16, 32, 64], decoder_layers=2, **_RT_DETR_COMMON)
    return config, T.RTDetrImageProcessorPil(size={"height": 128, "width": 128})


def _tiny_d_fine_like(config_class):
    """D-FINE and DEIMv2 (D-FINE's decoder trained with DEIM's matching): an HGNetV2 backbone."""
    import transformers as T

    backbone = T.HGNetV2Config(stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 64], stage_mid_channels=[8, 8, 16, 16], stage_out_channels=[16, 32, 64, 128], stage_num_blocks=[1] * 4, stage_numb_of_layers=[1] * 4, hidden_sizes=[16, 32, 64, 128], depths=[1] * 4, out_features=["stage2", "stage3", "stage4"])
    config = config_class(backbone_config=backbone, encoder_in_channels=[32, 64, 128], decoder_layers=2, decoder_n_points=[3, 6, 3], depth_mult=0.34, hidden_expansion=0.5, **_RT_DETR_COMMON)
    return config, T.RTDetrImageProcessorPil(size={"height": 128, "width": 128})


def tiny_d_fine():
    import transformers as T

    return _tiny_d_fine_like(T.DFineConfig)


def tiny_deimv2():
    import transformers as T

    return _tiny_d_fine_like(T.Deimv2Config)


def tiny_table_transformer():
    import transformers as T

    return T.TableTransformerConfig(backbone_config=tiny_resnet(["stage3"]), **_DETR_COMMON), T.DetrImageProcessorPil(size=_SHORT_EDGE)


FAMILIES = [
    Family("detr", "detection", DetrFamilyAdapter, tiny_detr),
    Family("conditional_detr", "detection", DetrFamilyAdapter, tiny_conditional_detr),
    Family("deformable_detr", "detection", DetrFamilyAdapter, tiny_deformable_detr),
    Family("dab-detr", "detection", DetrFamilyAdapter, tiny_dab_detr),
    Family("rt_detr", "detection", DetrFamilyAdapter, tiny_rt_detr),
    Family("rt_detr_v2", "detection", DetrFamilyAdapter, tiny_rt_detr_v2),
    Family("d_fine", "detection", DetrFamilyAdapter, tiny_d_fine),
    Family("deimv2", "detection", DetrFamilyAdapter, tiny_deimv2),
    Family("table-transformer", "detection", DetrFamilyAdapter, tiny_table_transformer),
    Family("yolos", "detection", DetrFamilyAdapter, tiny_yolos),
]
