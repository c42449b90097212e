"""data.decode: JPEGs decoded after the loader workers, on the device, with torchvision's decode_jpeg.

Which files the workers leave undecoded, what the batch carries, and the refusals run everywhere;
the decode itself needs torchvision (not a dependency of cvengine; those tests skip without it) and
runs on the CPU, where torchvision's decode_jpeg takes the same path as on a CUDA device (one batched
call per batch)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import detection_recipe, run_module
from cvengine.adapters import adapter_class, load_model
from cvengine.data.coco import CocoIndex
from cvengine.data.decode import ENCODED, EncodedCollate, decode_on_device, device_decodable_jpeg
from cvengine.data.images import read_image
from cvengine.tasks.detection.dataset import CocoDetectionDataset


def torchvision_decodes() -> bool:
    try:
        import torchvision.io  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or built for another torch
        return False
    return True


needs_torchvision = pytest.mark.skipif(not torchvision_decodes(), reason="torchvision (built for this torch) is not installed")


def test_which_files_are_left_to_the_device(tmp_path):
    """Only JPEGs that decode as they are: three components, no EXIF orientation to apply."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.jpg", quality=90)
    upright = Image.Exif()
    upright[0x0112] = 1
    Image.fromarray(pixels).save(tmp_path / "upright.jpg", quality=90, exif=upright)
    rotated = Image.Exif()
    rotated[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", quality=90, exif=rotated)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "gray.jpg", quality=90)
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    assert device_decodable_jpeg(str(tmp_path / "rgb.jpg")) == (30, 40)
    assert device_decodable_jpeg(str(tmp_path / "upright.jpg")) == (30, 40)
    for name in ("rotated.jpg", "gray.jpg", "cmyk.jpg", "image.png"):
        assert device_decodable_jpeg(str(tmp_path / name)) is None, name


def _detection_batch(data_root, tiny_model, decode: bool):
    """A batch of the 4 first train images of `data_root` through the detection dataset and the DETR
    adapter's collate, every resize left to the device; with `decode`, the JPEGs left undecoded."""
    index = CocoIndex.load(data_root / "train" / "annotations.json", data_root / "train" / "images")
    model, processor, _, _ = load_model(tiny_model("detection", "detr"), True, "detection", index.class_names)
    adapter = adapter_class("detection", "detr")(model, processor)
    adapter.resize.defer_above = 0.0  # as data.decode on the device sets it: only the decoder differs
    dataset = CocoDetectionDataset(index, resize=adapter.resize)
    dataset.decode_on_device = decode
    collate = EncodedCollate(adapter.collate, index.images_dir) if decode else adapter.collate
    return adapter, index, collate([dataset[i] for i in range(4)])


@pytest.fixture
def mixed_detection(demo_detection, tmp_path):
    """The demo detection data with its second train image stored as PNG."""
    root = tmp_path / "data"
    shutil.copytree(demo_detection, root)
    annotations = json.loads((root / "train" / "annotations.json").read_text())
    record = annotations["images"][1]
    jpeg = root / "train" / "images" / record["file_name"]
    Image.open(jpeg).save(jpeg.with_suffix(".png"))
    record["file_name"] = jpeg.with_suffix(".png").name
    (root / "train" / "annotations.json").write_text(json.dumps(annotations))
    return root


def test_workers_send_the_jpeg_bytes_and_decode_the_rest(mixed_detection, tiny_model):
    adapter, index, batch = _detection_batch(mixed_detection, tiny_model, decode=True)
    encoded = batch[ENCODED]
    assert encoded[1] is None  # the PNG: decoded by PIL in the worker
    for i in (0, 2, 3):
        assert encoded[i] == open(index.image_path(i), "rb").read()
        assert not batch["pixels_uint8"][i].any()  # a placeholder until the device decodes it
    png = read_image(index.image_path(1))
    h, w = png.shape[:2]
    assert batch["image_sizes"][1] == (h, w)
    assert torch.equal(batch["pixels_uint8"][1, :, :h, :w], torch.from_numpy(np.array(png)).permute(2, 0, 1))
    # Sizes come from the JPEG headers: the device-side resize targets are those of decoded images.
    _, _, decoded = _detection_batch(mixed_detection, tiny_model, decode=False)
    assert batch["image_sizes"] == decoded["image_sizes"] and batch["input_sizes"] == decoded["input_sizes"]


def test_gpu_decode_without_cuda_exits_2_with_one_line(demo_detection, tiny_model, tmp_path):
    import tomli_w

    recipe = detection_recipe(demo_detection, tiny_model("detection", "detr"), tmp_path / "runs")
    recipe["data"]["decode"] = "gpu"
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(recipe))
    result = run_module("cvengine.run", path, "--no-progress", env={"CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "data.decode = 'gpu' needs a CUDA device (this run is on cpu)" in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before any run folder


@needs_torchvision
def test_device_decode_equals_the_pil_path(mixed_detection, tiny_model):
    """The model inputs from bytes decoded by torchvision equal those decoded by PIL in the workers,
    within what two JPEG decoders differ by (both libjpeg-turbo: rounding of the IDCT and of chroma
    upsampling)."""
    adapter, _, batch = _detection_batch(mixed_detection, tiny_model, decode=True)
    _, _, reference = _detection_batch(mixed_detection, tiny_model, decode=False)
    decode_on_device(batch, "cpu")
    assert ENCODED not in batch
    levels = (batch["pixels_uint8"].int() - reference["pixels_uint8"].int()).abs()
    assert levels.max() <= 3 and levels.float().mean() < 0.05, (int(levels.max()), float(levels.float().mean()))
    ours = adapter.model_inputs(batch, with_labels=False)["pixel_values"]
    theirs = adapter.model_inputs(reference, with_labels=False)["pixel_values"]
    one_level = adapter.normalize.scale.view(1, 3, 1, 1)
    assert float(((ours - theirs).abs() / one_level).mean()) < 0.05


@needs_torchvision
def test_training_with_device_decode_follows_the_pil_path(demo_detection, tiny_model, tmp_path):
    """Two epochs of a tiny DETR: the same losses from bytes decoded in the main process as from
    images decoded in the workers (every resize on the device in both), within decoder rounding."""
    from accelerate.state import AcceleratorState

    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    losses = {}
    for on_device in (False, True):
        AcceleratorState._reset_state(reset_partial_state=True)
        recipe = load_recipe(detection_recipe(demo_detection, tiny_model("detection", "detr"), tmp_path / str(on_device), max_epochs=2))
        engine = Engine(recipe, checkpoint=None, tracker=None, progress=False)
        engine.decode_on(torch.device("cpu") if on_device else None)
        engine.adapter.resize.defer_above = 0.0
        engine.fit()
        losses[on_device] = [engine.evaluate("val")["val/loss"], engine.state.global_step]
        AcceleratorState._reset_state(reset_partial_state=True)
    assert losses[True][1] == losses[False][1] == 8
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-3)


def test_gpu_decode_refusals_and_auto(tiny_model, demo_detection):
    """What data.decode = "gpu" needs besides a CUDA device, each refused with its own line; "auto"
    falls back to the loader workers instead. (A CUDA device is only named here: nothing runs on it.)"""
    from cvengine.data.decode import resolve_decode
    from cvengine.errors import RecipeError

    cuda = torch.device("cuda")
    classifier, processor, _, _ = load_model(tiny_model("classification", "vit"), True, "classification", ["a", "b"])
    detector, detr_processor, _, _ = load_model(tiny_model("detection", "detr"), True, "detection", ["a", "b"])
    classification = adapter_class("classification", "vit")(classifier, processor)
    detection = adapter_class("detection", "detr")(detector, detr_processor)
    cases = [(classification, False, "an adapter that resizes on the device"), (detection, True, "augment.enabled = false")]
    for adapter, augmenting, needs in cases:
        with pytest.raises(RecipeError, match=f"data.decode = 'gpu' needs {needs}"):
            resolve_decode("gpu", cuda, adapter, augmenting)
        assert resolve_decode("auto", cuda, adapter, augmenting) is None
    assert resolve_decode("cpu", cuda, detection, False) is None
    if torchvision_decodes():
        assert resolve_decode("gpu", cuda, detection, False) == cuda
    else:
        with pytest.raises(RecipeError, match="data.decode = 'gpu' needs torchvision built for torch"):
            resolve_decode("gpu", cuda, detection, False)
        assert resolve_decode("auto", cuda, detection, False) is None
