"""Semantic segmentation models of transformers (`AutoModelForSemanticSegmentation`): SegFormer,
UperNet, DPT, MobileViT (DeepLabV3 head) and BEiT. They share one label format and one output:

  labels:  (B, S, S) int64 label map at the input size, IGNORE (255) where nothing is learned.
           The models' own losses upsample their logits to the label size and skip the ignore index.
  outputs: logits (B, K, h, w) at a fraction of the input size.

Predictions are label maps at the ORIGINAL image size: logits are upsampled (bilinear) to each
image's original size before the argmax, so that metrics compare with the annotation pixels.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from cvengine.adapters.base import Adapter, Family
from cvengine.data.dataset import Sample
from cvengine.data.masks import IGNORE
from cvengine.data.transforms import Normalizer, ResizePolicy, pad_stack, padded_hw, resize_labels_on_device, resize_on_device

# Config attributes through which each family's loss learns the ignored label.
_IGNORE_INDEX_KEYS = ("semantic_loss_ignore_index", "loss_ignore_index")
# The loader worker resizes only the images that their resize shrinks to half their pixels or less
# (large photographs, whose copies it makes smaller); every other resize, of the image and of its
# label map, is done on the device for the whole batch.
DEFER_ABOVE = 0.5


class SemanticSegmentationAdapter(Adapter):
    task = "semantic_segmentation"
    auto_model = "AutoModelForSemanticSegmentation"
    # DPT: the backbone's final layernorm and the first fusion layer's residual unit are not applied.
    unused_parameter_families = frozenset({"dpt"})
    # model_inputs resizes images of any size to their input size (data.decode on the device needs it).
    resizes_on_device = True

    def __init__(self, model, processor, image_size: int | None = None):
        super().__init__(model, processor, image_size)
        # The checkpoint processor's resize rule and filter; label maps follow with NEAREST. No centre
        # crop: every pixel of the image is predicted and scored.
        self.resize = ResizePolicy.from_processor(processor, image_size, defer_above=DEFER_ABOVE, crop=False)
        self.normalize = Normalizer(processor)
        for key in _IGNORE_INDEX_KEYS:
            if hasattr(model.config, key):
                setattr(model.config, key, IGNORE)

    # -- in the loader workers ----------------------------------------------------------------------
    def collate(self, samples: list[Sample]) -> dict:
        # Sizes differ only for processors that keep the aspect ratio (DPT, MobileViT): padding is
        # zero after normalisation and IGNORE in the labels, so it is neither seen nor learned.
        image_sizes = [tuple(s.image.shape[:2]) for s in samples]
        pixels, pixel_mask = pad_stack([s.image for s in samples])
        # uint8 (labels < IGNORE = 255, see SemanticIndex): 8x less to fill, pin and move than int64.
        labels = np.full((len(samples),) + tuple(pixels.shape[-2:]), IGNORE, dtype=np.uint8)
        for row, s in enumerate(samples):
            labels[row, : s.semantic_map.shape[0], : s.semantic_map.shape[1]] = s.semantic_map
        return {
            "pixels_uint8": pixels,  # (B, 3, H, W) uint8
            "pixel_mask": pixel_mask,  # (B, H, W) uint8, 1 on real pixels
            "labels": torch.from_numpy(labels),  # (B, H, W) uint8, IGNORE = 255, at the sizes of `pixels_uint8`
            "image_ids": torch.tensor([s.image_id for s in samples], dtype=torch.int64),
            "orig_sizes": torch.tensor([s.orig_size for s in samples], dtype=torch.int64),  # (B, 2) H, W
            # Plain lists (stay on the host): sizes of the images in `pixels_uint8`, and the model-input
            # sizes (resized, unpadded) they still have to reach on the device.
            "image_sizes": image_sizes,
            "input_sizes": [self.resize.input_hw(h, w) for h, w in image_sizes],
        }

    # -- on the device: the base Adapter's loss ------------------------------------------------------
    def model_inputs(self, batch: dict, with_labels: bool = True) -> dict:
        pixels, pixel_mask, labels = batch["pixels_uint8"], batch["pixel_mask"], batch["labels"]
        sizes, targets = batch["image_sizes"], batch["input_sizes"]
        if sizes != targets:
            pixels, pixel_mask = resize_on_device(pixels, sizes, targets)
            if with_labels:
                labels = resize_labels_on_device(labels, sizes, targets, IGNORE)
        # Padding is zero after normalisation, as the processors pad.
        inputs = {"pixel_values": self.normalize(pixels) * pixel_mask.unsqueeze(1)}
        if with_labels:
            inputs["labels"] = labels.long()  # (B, H', W') int64, as the models' losses index with it
        return inputs

    def postprocess(self, outputs, batch: dict) -> list[dict]:
        """-> per image {image_id, semantic_map (H, W) uint8 at the original image size}."""
        logits = outputs.logits  # (B, K, h, w) at a fraction of the padded input (Hp, Wp)
        input_sizes = [tuple(hw) for hw in (batch["input_sizes"].tolist() if isinstance(batch["input_sizes"], torch.Tensor) else batch["input_sizes"])]
        model_hw = padded_hw(input_sizes)
        predictions = []
        sizes = zip(batch["image_ids"].tolist(), batch["orig_sizes"].tolist(), input_sizes)
        for row, (image_id, (h, w), (ih, iw)) in enumerate(sizes):
            image_logits = logits[row : row + 1].float()
            if (ih, iw) != model_hw:
                # Up to the padded input, padding cropped away, then to the original size.
                image_logits = torch.nn.functional.interpolate(image_logits, size=model_hw, mode="bilinear", align_corners=False)[:, :, :ih, :iw]
            upsampled = torch.nn.functional.interpolate(image_logits, size=(h, w), mode="bilinear", align_corners=False)
            label_map = upsampled[0].argmax(dim=0).to(torch.uint8 if logits.shape[1] <= 255 else torch.int32)
            predictions.append({"image_id": image_id, "semantic_map": label_map.cpu().numpy()})
        return predictions

    def backbone_parameter_names(self, model) -> set[str]:
        # The encoder: the base model (`segformer.`, `dpt.`, `beit.`, `mobilevit.`), or UperNet's `backbone.`.
        prefix = model.base_model_prefix + "." if model.base_model_prefix else "backbone."
        return {name for name, _ in model.named_parameters() if name.startswith(prefix)}


# -- small random-init configurations (tests, the demo job) -----------------------------------------
SEMANTIC_SIDE = 128


def tiny_semantic(family: str):
    import transformers as T

    side = SEMANTIC_SIDE
    square = {"height": side, "width": side}
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


FAMILIES = [Family(name, "semantic_segmentation", SemanticSegmentationAdapter, functools.partial(tiny_semantic, name)) for name in ("segformer", "upernet", "dpt", "mobilevit", "beit")]
