"""Images/s of ONE loader worker on cvengine's semantic segmentation train path, against bare JPEG decode.

    python benchmarks/bench_segmentation_pipeline.py [--images 48] [--batch-size 8] [--repeats 3]

One process, num_workers=0, one thread. The data: the digits demo set at 640x480 (1-4 digits per
canvas, COCO RLE masks and the same labels as PNG masks).

(a) bare decode: `np.asarray(Image.open(p).convert("RGB"))` per image — the ceiling of any path.
(b) cvengine, COCO layout: the task's train dataset (EXIF-aware read, RLE decode + painting of the
    label map, default Albumentations augmentation with the mask) in a DataLoader with the adapter's
    collate. The resize to SegFormer's 512x512 keeps more than half the pixels, so the worker leaves
    it (image bilinear, label map NEAREST) to the device, as the engine does.
(c) cvengine, PNG-mask layout: the same with the label map read from the PNG instead.
(d) what (b) left to the device, run here on the CPU in the main process: the adapter's
    `model_inputs` on the collated batches (resize, normalisation, labels to int64), in ms/image.
(e) for context, Hugging Face `SegformerImageProcessor` (PIL backend) on decoded images and masks.
(a), (b) and (c) alternate; the ratios are the medians of the per-repetition ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

cv2.setNumThreads(1)
torch.set_num_threads(1)


def bare_decode(paths: list[str]) -> float:
    started = time.perf_counter()
    for p in paths:
        np.asarray(Image.open(p).convert("RGB"))
    return len(paths) / (time.perf_counter() - started)


def build_loader(root: str, layout: str, batch_size: int):
    import transformers as T

    from cvengine.adapters.semantic import SemanticSegmentationAdapter
    from cvengine.recipe import load_recipe
    from cvengine.tasks import get_task

    split = {"images": "train/images", "annotations": "train/annotations.json"} if layout == "coco" else {"images": "train/images", "masks": "train/masks"}
    recipe = load_recipe({"task": "semantic_segmentation", "model": {"name": "unused"}, "data": {"root": root, "batch_size": batch_size, "num_workers": 0, "labels": "train/labels.json", "train": split}})
    task = get_task("semantic_segmentation")
    index = task.load_index(recipe, "train")
    model = T.SegformerForSemanticSegmentation(T.SegformerConfig(hidden_sizes=[8, 16, 32, 64], depths=[1] * 4, num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=32, num_labels=index.num_classes))
    adapter = SemanticSegmentationAdapter(model, T.SegformerImageProcessorPil())  # 512x512, as nvidia/segformer-* checkpoints
    dataset = task.build_dataset(recipe, index, adapter, train=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0, collate_fn=adapter.collate, generator=torch.Generator().manual_seed(0))
    return dataset, loader, adapter


def loader_pass(dataset, loader, epoch: int) -> float:
    dataset.set_epoch(epoch)
    started = time.perf_counter()
    count = 0
    for batch in loader:
        count += batch["pixels_uint8"].shape[0]
    return count / (time.perf_counter() - started)


def device_step_ms(loader, adapter) -> float:
    """ms/image of the adapter's device-side step on the loader's batches, on this CPU."""
    batches = list(loader)
    started = time.perf_counter()
    for batch in batches:
        adapter.model_inputs(batch)
    return 1000 * (time.perf_counter() - started) / sum(b["pixels_uint8"].shape[0] for b in batches)


def hf_pass(root: str, paths: list[str], batch_size: int) -> float:
    from transformers import SegformerImageProcessorPil

    processor = SegformerImageProcessorPil(do_reduce_labels=False)
    started = time.perf_counter()
    for s in range(0, len(paths), batch_size):
        chunk = paths[s : s + batch_size]
        images = [np.asarray(Image.open(p).convert("RGB")) for p in chunk]
        masks = [np.asarray(Image.open(os.path.join(root, "train", "masks", os.path.splitext(os.path.basename(p))[0] + ".png"))) for p in chunk]
        processor(images=images, segmentation_maps=masks, return_tensors="pt")
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from cvengine.data.demo import make_demo

    with tempfile.TemporaryDirectory() as root:
        demo = make_demo(root, task="semantic_segmentation", num_train=args.images, num_val=1, canvas=(480, 640))
        images_dir = demo["splits"]["train"]["images"]
        paths = [os.path.join(images_dir, f) for f in sorted(os.listdir(images_dir))]
        coco = build_loader(root, "coco", args.batch_size)
        masks = build_loader(root, "masks", args.batch_size)
        bare, ours, ours_png = [], [], []
        bare_decode(paths)  # warm the page cache
        for r in range(args.repeats):
            bare.append(bare_decode(paths))
            ours.append(loader_pass(*coco[:2], epoch=r))
            ours_png.append(loader_pass(*masks[:2], epoch=r))
        device_ms = device_step_ms(coco[1], coco[2])
        hf = hf_pass(root, paths, args.batch_size)
    bare_m, ours_m, png_m = (statistics.median(v) for v in (bare, ours, ours_png))
    print(f"{args.images} images 640x480 -> 512x512, batch {args.batch_size}, one worker, {args.repeats} repeats (medians)")
    print(f"bare decode                         images_per_s: {bare_m:8.1f}")
    print(f"cvengine (COCO RLE -> label map)    images_per_s: {ours_m:8.1f}")
    print(f"cvengine (PNG masks)                images_per_s: {png_m:8.1f}")
    print(f"HF SegformerImageProcessor (PIL)    images_per_s: {hf:8.1f}")
    print(f"device step (resize, normalise) on this CPU, ms/image: {device_ms:.2f}")
    print(f"ratio cvengine_png/bare_decode images_per_s: {statistics.median(p / b for p, b in zip(ours_png, bare)):.2f}")
    print(f"ratio cvengine/bare_decode images_per_s: {statistics.median(o / b for o, b in zip(ours, bare)):.2f}")


if __name__ == "__main__":
    main()
