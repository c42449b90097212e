"""Images/s of ONE loader worker on cvengine's detection train path, against bare JPEG decode.

    python benchmarks/bench_data_pipeline.py [--images 64] [--batch-size 8] [--repeats 5]
                                             [--hf-repeats 1] [--profile]

One process, num_workers=0, one thread (OMP, torch and OpenCV): what a single DataLoader worker can
deliver. The data: `--images` 640x480 JPEGs (quality 90, with an EXIF block as cameras write it) of
the digits demo set — textured, noisy canvases with digits and their COCO boxes, which decode like
photographs rather than like flat colour.

(a) bare decode: `np.asarray(Image.open(p).convert("RGB"))` per image — the ceiling of any path.
(b) cvengine: the detection task's train dataset (EXIF-aware read, the default Albumentations
    augmentation — HorizontalFlip + RandomBrightnessContrast — with boxes, the resize policy of
    DETR's processor: shortest edge 800, longest 1333) in a DataLoader with the DETR adapter's
    collate: padded uint8 batches of `--batch-size`, exactly what the engine builds.
(c) for context, Hugging Face `DetrImageProcessor` (PIL backend): decode, then the processor on
    each batch with its COCO annotations (resize, rescale, normalize, pad, box conversion).
(a) and (b) alternate A/B/A/B; the medians are reported, and a per-stage split of (b) in ms/image.
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

JPEG_QUALITY = 90


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="A/B repetitions of bare decode and cvengine")
    p.add_argument("--hf-repeats", type=int, default=1, help="passes of the (slow) Hugging Face processor path")
    p.add_argument("--profile", action="store_true", help="cProfile one cvengine pass and print the top functions")
    return p.parse_args()


def write_images(out_dir: str, num_images: int) -> dict:
    """The demo detection set at 640x480, re-encoded at JPEG_QUALITY with an EXIF block (orientation 1)."""
    from cvengine.data.demo import make_demo

    demo = make_demo(out_dir, num_train=num_images, num_val=1, canvas=(480, 640))
    split = demo["splits"]["train"]
    exif = Image.Exif()
    exif[0x0112] = 1  # Orientation: upright, so that the EXIF step is exercised but changes nothing
    exif[0x010F] = "cvengine benchmark"  # Make
    for name in sorted(os.listdir(split["images"])):
        path = os.path.join(split["images"], name)
        with Image.open(path) as image:
            image = image.convert("RGB")
        image.save(path, quality=JPEG_QUALITY, exif=exif)
    return split


def bare_decode(paths: list[str]) -> float:
    started = time.perf_counter()
    for p in paths:
        np.asarray(Image.open(p).convert("RGB"))
    return len(paths) / (time.perf_counter() - started)


def build_cvengine_loader(split: dict, batch_size: int):
    """The engine's train loader, built the way `Engine._loader` builds it (one process)."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessorPil, ResNetConfig

    from cvengine.adapters import adapter_class
    from cvengine.data.coco import CocoIndex
    from cvengine.recipe import load_recipe
    from cvengine.tasks import get_task

    recipe = load_recipe({"task": "detection", "model": {"name": "unused"}, "data": {"batch_size": batch_size, "num_workers": 0}})
    task = get_task("detection")
    index = CocoIndex.load(split["annotations"], split["images"])
    # The adapter takes the resize policy from the processor (DETR: 800 / 1333) and inspects the model's
    # forward for its inputs only: a tiny DETR is enough.
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic", out_features=["stage3"])
    model = DetrForObjectDetection(DetrConfig(backbone_config=backbone, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=20, num_labels=index.num_classes, use_pretrained_backbone=False))
    adapter = adapter_class("detection", "detr")(model, DetrImageProcessorPil())
    dataset = task.build_dataset(recipe, index, adapter, train=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0, collate_fn=adapter.collate, generator=torch.Generator().manual_seed(0))
    return dataset, loader, adapter


def cvengine_pass(dataset, loader, epoch: int) -> tuple[float, tuple]:
    dataset.set_epoch(epoch)  # a new augmentation draw each pass, as each epoch gets
    started = time.perf_counter()
    count = 0
    for batch in loader:
        count += batch["pixels_uint8"].shape[0]
    return count / (time.perf_counter() - started), tuple(batch["pixels_uint8"].shape)


def hf_processor_pass(split: dict, batch_size: int) -> float:
    from transformers import DetrImageProcessorPil

    from cvengine.data.coco import read_json

    processor = DetrImageProcessorPil()
    data = read_json(split["annotations"])
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    records = [(os.path.join(split["images"], im["file_name"]), {"image_id": im["id"], "annotations": by_image.get(im["id"], [])}) for im in data["images"]]
    started = time.perf_counter()
    for s in range(0, len(records), batch_size):
        chunk = records[s : s + batch_size]
        images = [Image.open(p).convert("RGB") for p, _ in chunk]
        processor(images=images, annotations=[a for _, a in chunk], return_tensors="pt")
    return len(records) / (time.perf_counter() - started)


def stage_split(dataset, adapter, batch_size: int) -> dict[str, float]:
    """ms/image of each stage of the cvengine path, run one after the other on every image."""
    from cvengine.data.images import read_image

    index, n = dataset.index, len(dataset)
    times = {"read (decode + EXIF)": 0.0, "augment": 0.0, "resize": 0.0, "collate": 0.0}
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        image = read_image(index.image_path(i))
        t1 = time.perf_counter()
        boxes, labels = index.targets(i)
        dataset.augment.set_random_seed(i)
        out = dataset.augment(image=image, bboxes=boxes, labels=labels)
        t2 = time.perf_counter()
        resized, _, _ = dataset.resize(out["image"], np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
        t3 = time.perf_counter()
        times["read (decode + EXIF)"] += t1 - t0
        times["augment"] += t2 - t1
        times["resize"] += t3 - t2
        samples.append(dataset[i])
    for s in range(0, n, batch_size):
        t0 = time.perf_counter()
        adapter.collate(samples[s : s + batch_size])
        times["collate"] += time.perf_counter() - t0
    return {k: 1000 * v / n for k, v in times.items()}


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="cvengine-bench-data-") as tmp:
        t0 = time.perf_counter()
        split = write_images(tmp, args.images)
        paths = [os.path.join(split["images"], f) for f in sorted(os.listdir(split["images"]))]
        size_kb = statistics.mean(os.path.getsize(p) for p in paths) / 1024
        dataset, loader, adapter = build_cvengine_loader(split, args.batch_size)
        print(f"{len(paths)} JPEGs 640x480 q{JPEG_QUALITY}, mean {size_kb:.0f} KB, written in {time.perf_counter() - t0:.1f} s; one process, one thread")

        # Warm-up: file cache, imports and first-call costs of every path.
        bare_decode(paths)
        cvengine_pass(dataset, loader, epoch=0)

        bare_rates, cv_rates = [], []
        for r in range(args.repeats):
            bare_rates.append(bare_decode(paths))
            rate, shape = cvengine_pass(dataset, loader, epoch=r + 1)
            cv_rates.append(rate)
            print(f"repetition {r + 1}: bare decode {bare_rates[-1]:.1f} images/s, cvengine {cv_rates[-1]:.1f} images/s, ratio {cv_rates[-1] / bare_rates[-1]:.3f}", flush=True)
        hf_rates = [hf_processor_pass(split, args.batch_size) for _ in range(args.hf_repeats)]

        bare, cv = statistics.median(bare_rates), statistics.median(cv_rates)
        ratio = statistics.median(c / b for c, b in zip(cv_rates, bare_rates))
        print(f"cvengine batches: {shape} uint8 (+ pixel_mask, labels)")
        print("cvengine stages, ms/image: " + ", ".join(f"{k} {v:.2f}" for k, v in stage_split(dataset, adapter, args.batch_size).items()))
        print(f"bare PIL decode images/s (median): {bare:.1f}")
        print(f"cvengine train path images/s (median): {cv:.1f}")
        if hf_rates:
            hf = statistics.median(hf_rates)
            print(f"HF DetrImageProcessor (PIL) path images/s: {hf:.1f}  (cvengine is {cv / hf:.1f}x faster)")
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            for epoch in range(100, 103):
                cvengine_pass(dataset, loader, epoch)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        print(f"ratio cvengine/bare_decode images_per_s: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
