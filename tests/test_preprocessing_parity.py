"""The fast input path equals the checkpoint's own image processor, for every registered family.

Inputs that differ from `AutoImageProcessor`'s make a model trained here see other pixels than the
ecosystem (pipelines, the processor a user loads beside the weights) feeds it. Each family's fast path
(resize rule, resampling filter, centre crop, rescale, normalisation, channel order, padding,
size_divisor) runs in the loader workers and on the device; this test compares its `pixel_values`
with the processor's own, on real photographs of several aspect ratios.

Each processor is built with the settings of the hub checkpoint its shipped recipe names (the hub is
not reachable here), written down below with that hub id; a family without a shipped recipe is
checked with its tiny test processor. Dense tasks never centre-crop (every pixel is predicted), so
their processors are called with do_center_crop=False.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvengine.adapters import FAMILIES

REPO = Path(__file__).resolve().parents[1]
VOC_IMAGES = REPO.parent / "shared" / "external-data" / "rodm" / "data" / "database" / "images"

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]
DETR_SIZE = {"shortest_edge": 800, "longest_edge": 1333}

# (task, model_type) -> (hub id of the shipped recipe, processor class, its settings)
HUB_PROCESSORS = {
    ("classification", "vit"): ("google/vit-base-patch16-224", "ViTImageProcessorPil", dict(size={"height": 224, "width": 224}, resample=2, image_mean=HALF, image_std=HALF)),
    ("classification", "deit"): ("facebook/deit-small-distilled-patch16-224", "DeiTImageProcessorPil", dict(size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("classification", "beit"): ("microsoft/beit-base-patch16-224", "BeitImageProcessorPil", dict(size={"height": 224, "width": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=False, resample=2, image_mean=HALF, image_std=HALF)),
    ("classification", "dinov2"): ("facebook/dinov2-small-imagenet1k-1-layer", "BitImageProcessorPil", dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("classification", "resnet"): ("microsoft/resnet-50", "ConvNextImageProcessorPil", dict(size={"shortest_edge": 224}, crop_pct=0.875, resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("classification", "convnext"): ("facebook/convnext-tiny-224", "ConvNextImageProcessorPil", dict(size={"shortest_edge": 224}, crop_pct=0.875, resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("classification", "convnextv2"): ("facebook/convnextv2-tiny-1k-224", "ConvNextImageProcessorPil", dict(size={"shortest_edge": 224}, crop_pct=0.875, resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("classification", "swin"): ("microsoft/swin-tiny-patch4-window7-224", "ViTImageProcessorPil", dict(size={"height": 224, "width": 224}, resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("classification", "efficientnet"): ("google/efficientnet-b0", "EfficientNetImageProcessorPil", dict(size={"height": 224, "width": 224}, crop_size={"height": 289, "width": 289}, do_center_crop=False, resample=0, rescale_offset=False, include_top=True, image_mean=IMAGENET_MEAN, image_std=[0.47853944, 0.4732864, 0.47434163])),
    ("classification", "mobilenet_v2"): ("google/mobilenet_v2_1.0_224", "MobileNetV2ImageProcessorPil", dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=2, image_mean=HALF, image_std=HALF)),
    ("classification", "mobilevit"): ("apple/mobilevit-small", "MobileViTImageProcessorPil", dict(size={"shortest_edge": 288}, crop_size={"height": 256, "width": 256}, do_center_crop=True, do_flip_channel_order=True, resample=2)),
    ("semantic_segmentation", "segformer"): ("nvidia/segformer-b0-finetuned-ade-512-512", "SegformerImageProcessorPil", dict(size={"height": 512, "width": 512}, resample=2, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("semantic_segmentation", "upernet"): ("openmmlab/upernet-convnext-small", "SegformerImageProcessorPil", dict(size={"height": 512, "width": 512}, resample=2, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("semantic_segmentation", "dpt"): ("Intel/dpt-large-ade", "DPTImageProcessorPil", dict(size={"height": 384, "width": 384}, resample=2, keep_aspect_ratio=False, ensure_multiple_of=1, image_mean=HALF, image_std=HALF)),
    ("semantic_segmentation", "mobilevit"): ("apple/deeplabv3-mobilevit-small", "MobileViTImageProcessorPil", dict(size={"shortest_edge": 512}, crop_size={"height": 512, "width": 512}, do_center_crop=True, do_flip_channel_order=True, resample=2)),
    ("semantic_segmentation", "beit"): ("microsoft/beit-base-finetuned-ade-640-640", "BeitImageProcessorPil", dict(size={"height": 640, "width": 640}, crop_size={"height": 640, "width": 640}, do_center_crop=False, resample=2, image_mean=HALF, image_std=HALF)),
    ("detection", "detr"): ("facebook/detr-resnet-50", "DetrImageProcessorPil", dict(size=DETR_SIZE, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("detection", "conditional_detr"): ("microsoft/conditional-detr-resnet-50", "ConditionalDetrImageProcessorPil", dict(size=DETR_SIZE, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("detection", "deformable_detr"): ("SenseTime/deformable-detr", "DeformableDetrImageProcessorPil", dict(size=DETR_SIZE, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("detection", "dab-detr"): ("IDEA-Research/dab-detr-resnet-50", "DetrImageProcessorPil", dict(size=DETR_SIZE, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("detection", "rt_detr"): ("PekingU/rtdetr_r50vd", "RTDetrImageProcessorPil", dict(size={"height": 640, "width": 640}, do_normalize=False, do_pad=False)),
    ("detection", "rt_detr_v2"): ("PekingU/rtdetr_v2_r50vd", "RTDetrImageProcessorPil", dict(size={"height": 640, "width": 640}, do_normalize=False, do_pad=False)),
    ("detection", "d_fine"): ("ustc-community/dfine-medium-coco", "RTDetrImageProcessorPil", dict(size={"height": 640, "width": 640}, do_normalize=False, do_pad=False)),
    ("detection", "yolos"): ("hustvl/yolos-small", "YolosImageProcessorPil", dict(size=DETR_SIZE, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("instance_segmentation", "mask2former"): ("facebook/mask2former-swin-small-coco-instance", "Mask2FormerImageProcessorPil", dict(size={"shortest_edge": 384, "longest_edge": 1333}, size_divisor=32, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("panoptic_segmentation", "mask2former"): ("facebook/mask2former-swin-small-coco-panoptic", "Mask2FormerImageProcessorPil", dict(size={"shortest_edge": 384, "longest_edge": 1333}, size_divisor=32, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("semantic_segmentation", "mask2former"): ("facebook/mask2former-swin-small-ade-semantic", "Mask2FormerImageProcessorPil", dict(size={"shortest_edge": 384, "longest_edge": 1333}, size_divisor=32, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("instance_segmentation", "maskformer"): ("facebook/maskformer-swin-small-coco", "MaskFormerImageProcessorPil", dict(size={"shortest_edge": 800, "longest_edge": 1333}, size_divisor=32, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("panoptic_segmentation", "maskformer"): ("facebook/maskformer-swin-small-coco", "MaskFormerImageProcessorPil", dict(size={"shortest_edge": 800, "longest_edge": 1333}, size_divisor=32, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
    ("semantic_segmentation", "maskformer"): ("facebook/maskformer-swin-small-ade", "MaskFormerImageProcessorPil", dict(size={"shortest_edge": 512, "longest_edge": 2048}, size_divisor=32, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)),
}
DENSE = ("semantic_segmentation", "instance_segmentation", "panoptic_segmentation")
# Families whose processor needs a package that is optional here (timm needs torchvision).
NEEDS_TIMM = {"timm_wrapper"}


def photographs() -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB photographs of three aspect ratios: PASCAL VOC JPEGs when the external data
    lies beside the checkout, else smooth synthetic scenes of the same sizes."""
    if VOC_IMAGES.is_dir():
        paths = sorted(VOC_IMAGES.glob("*.jpg"))
        images = [np.asarray(Image.open(p).convert("RGB")) for p in paths[:12]]
        landscape = next(im for im in images if im.shape[1] > im.shape[0] * 1.2)
        portrait = next(im for im in images if im.shape[0] > im.shape[1])
        return [landscape, portrait, landscape[:97, :131].copy()]
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((375, 500), (500, 333), (97, 131)):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 200
        out.append(np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def family_adapter(family, tiny_model):
    """(adapter, image processor) of a tiny model of `family` loaded as a user's checkpoint is, with the
    processor of the family's shipped hub checkpoint when there is one."""
    import transformers

    from cvengine.adapters import load_model

    model, processor, _, _ = load_model(tiny_model(family.task, family.model_type, 3), True, family.task, ["a", "b", "c"])
    entry = HUB_PROCESSORS.get((family.task, family.model_type))
    if entry is not None:
        _, class_name, settings = entry
        processor = getattr(transformers, class_name)(**settings)
    adapter = family.adapter(model, processor, None)
    return adapter, getattr(processor, "image_processor", processor)


def fast_path_pixels(adapter, images: list[np.ndarray]) -> list[torch.Tensor]:
    """The fast path on each image alone: the loader's resize, collate, then model_inputs on the device;
    per image (3, h, w) with the padding of the batch removed."""
    from cvengine.data.dataset import Sample

    out = []
    for image in images:
        resized, _, _ = adapter.resize(image)
        sample = Sample(image=np.ascontiguousarray(resized), image_id=1, orig_size=image.shape[:2], boxes_xyxy_abs=np.zeros((0, 4), np.float32),
                        labels=np.zeros((0,), np.int64), masks=np.zeros((0,) + resized.shape[:2], np.uint8),
                        semantic_map=np.zeros(resized.shape[:2], np.int64), class_label=0)
        batch = adapter.collate([sample])
        out.append(adapter.model_inputs(batch, with_labels=False)["pixel_values"][0])
    return out


def processor_pixels(processor, task: str, images: list[np.ndarray]) -> list[torch.Tensor]:
    extra = {"do_center_crop": False} if task in DENSE and getattr(processor, "do_center_crop", None) else {}
    out = []
    for image in images:
        kwargs = dict(extra)
        if type(processor).__name__.startswith("OneFormer"):
            kwargs["task_inputs"] = ["semantic"]
        values = processor(images=[Image.fromarray(image)], return_tensors="pt", **kwargs)["pixel_values"]
        out.append(values[0])
    return out


REGISTERED = [f for f in FAMILIES if f.model_type not in NEEDS_TIMM]


@pytest.mark.parametrize("family", REGISTERED, ids=[f"{f.task}-{f.model_type}" for f in REGISTERED])
def test_fast_path_equals_the_checkpoint_processor(family, tiny_model):
    adapter, processor = family_adapter(family, tiny_model)
    images = photographs()
    ours = fast_path_pixels(adapter, images)
    theirs = processor_pixels(processor, family.task, images)
    std = np.asarray(getattr(processor, "image_std", None) or [1.0, 1.0, 1.0], np.float32) if getattr(processor, "do_normalize", False) else np.ones(3, np.float32)
    if getattr(processor, "include_top", False):
        std = std * np.asarray(processor.image_std, np.float32)
    one_level = torch.from_numpy(float(getattr(processor, "rescale_factor", 1 / 255)) / std).view(3, 1, 1)
    for image, a, b in zip(images, ours, theirs):
        # Same geometry: our input may carry extra padding (zero after normalisation) to a multiple the
        # backbone needs; the processor's own pixels must equal ours where they lie.
        h, w = b.shape[-2:]
        assert a.shape[-2] >= h and a.shape[-1] >= w, (image.shape, tuple(a.shape), tuple(b.shape))
        assert not a[:, h:].any() and not a[:, :, w:].any()
        # Same values: within one 8-bit grey level. The device upscale of detection (bilinear in float)
        # and PIL's (rounded to uint8) differ by at most half a level; every other path is exact.
        difference = (a[:, :h, :w] - b).abs()
        assert float((difference / one_level).max()) <= 1.0 + 1e-3, f"{image.shape}: max {float((difference / one_level).max()):.3f} grey levels"
