"""Every registered detection family, driven by the registry: tiny random checkpoint saved to disk and
loaded by path -> forward -> loss -> backward -> no NaN -> post-process -> COCO metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cvengine.adapters import ADAPTERS, adapter_class, load_model
from cvengine.data.coco import CocoIndex
from cvengine.tasks.detection.dataset import CocoDetectionDataset


@pytest.mark.parametrize("family", sorted(ADAPTERS["detection"]))
def test_detection_family_trains_and_postprocesses(family, tiny_model, check_unused_parameters, demo_detection):
    index = CocoIndex.load(demo_detection / "val" / "annotations.json", demo_detection / "val" / "images")
    model, processor, model_type, _ = load_model(tiny_model("detection", family), True, "detection", index.class_names)
    assert model_type == family
    assert model.config.id2label == dict(enumerate(index.class_names))
    adapter = adapter_class("detection", model_type)(model, processor)
    dataset = CocoDetectionDataset(index, resize=adapter.resize)
    samples = [dataset[i] for i in range(3)]
    batch = adapter.collate(samples)

    model.train()
    outputs = model(**adapter.model_inputs(batch))
    loss, parts = adapter.loss(outputs)
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert parts and all(math.isfinite(v.item()) for v in parts.values())
    loss.backward()
    check_unused_parameters(adapter, model)
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        outputs = model(**adapter.model_inputs(batch, with_labels=False))
    predictions = adapter.postprocess(outputs, batch)
    assert [p["image_id"] for p in predictions] == [s.image_id for s in samples]
    for p, s in zip(predictions, samples):
        h, w = s.orig_size
        boxes = p["boxes_xyxy_abs"]
        assert 0 < len(boxes) <= 100 and boxes.shape[1] == 4
        # Original-image pixels, not the model's input size or normalised coordinates.
        assert boxes[:, [0, 2]].max() <= w + 1e-3 and boxes[:, [1, 3]].max() <= h + 1e-3
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert ((p["labels"] >= 0) & (p["labels"] < len(index.class_names))).all()

    evaluator_index = CocoIndex.load(index.annotations_path, index.images_dir)
    from cvengine.tasks.detection.evaluate import DetectionEvaluator

    evaluator = DetectionEvaluator(evaluator_index)
    evaluator.update(predictions)
    metrics = evaluator.compute()
    assert set(metrics) >= {"val/map", "val/map_50", "val/map_75", "val/map_small", "val/map_medium", "val/map_large", "val/mar_100"}
    assert all(-1.0 <= v <= 1.0 for v in metrics.values())


def test_unknown_family_lists_supported(tmp_path):
    from transformers import ViTConfig

    from cvengine.errors import RecipeError

    ViTConfig(image_size=32, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16).save_pretrained(tmp_path)
    with pytest.raises(RecipeError) as err:
        load_model(str(tmp_path), True, "detection", ["a"])
    assert "'vit'" in str(err.value) and "rt_detr" in str(err.value) and "yolos" in str(err.value)


@pytest.mark.parametrize("family, image_size", [("detr", None), ("rt_detr", None), ("detr", 240), ("rt_detr", 224)])
def test_fast_path_matches_the_image_processor(family, image_size, tiny_model, demo_detection):
    """Our resize/pad/normalise reproduces what the family's own processor feeds the model, both when
    the loader worker shrinks the image and when the upscale is left to the device (160 px demo
    images, model sizes 128 and 224/240)."""
    from PIL import Image

    from cvengine.adapters.detr import DetrFamilyAdapter

    model, processor, _, _ = load_model(tiny_model("detection", family), True, "detection", [str(i) for i in range(10)])
    adapter = DetrFamilyAdapter(model, processor, image_size)
    index = CocoIndex.load(demo_detection / "train" / "annotations.json", demo_detection / "train" / "images")
    dataset = CocoDetectionDataset(index, resize=adapter.resize)
    samples = [dataset[0], dataset[1]]
    batch = adapter.collate(samples)
    deferred = batch["image_sizes"] != batch["input_sizes"]
    assert deferred == (image_size is not None)
    ours = adapter.model_inputs(batch, with_labels=False)["pixel_values"]
    images = [Image.open(index.image_path(i)).convert("RGB") for i in (0, 1)]
    theirs = processor(images=images, return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    # Same geometry and normalisation; resampling kernels differ slightly (cv2 / torch vs PIL).
    assert (ours - theirs).abs().mean() < 0.05


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (100, 3000), (800, 800)])
def test_resize_policy_matches_detr_processor_sizes(hw):
    from transformers import DetrImageProcessorPil

    from cvengine.data.transforms import ResizePolicy

    processor = DetrImageProcessorPil()
    image = np.zeros((*hw, 3), np.uint8)
    expected = processor(images=[image], return_tensors="np", do_pad=False)["pixel_values"][0].shape[-2:]
    assert ResizePolicy.from_processor(processor).target_hw(*hw) == tuple(expected)
