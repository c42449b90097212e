"""Training speed on one GPU, per model: cvengine's loop against a raw PyTorch loop, compiled
against eager, and from JPEG files on disk against batches already on the GPU.

    python benchmarks/gpu_suite.py              # all models, real sizes, random init (< 8 min on one GPU)
    python benchmarks/gpu_suite.py --quick      # fewer steps and repetitions (< 4 min)
    python benchmarks/gpu_suite.py --smoke      # tiny models, a few steps, on CPU (the test suite runs it)

Per model, in one process and on the same device:
  engine_vs_raw          Engine.fit images/s over a raw loop's (autocast, fused AdamW, clipping), both
                         on the same GPU-resident batches collated by the family's adapter; A/B
                         repetitions alternate so that a slower phase of the machine hits both;
  compiled_vs_raw_eager  Engine.fit with train.compile over the raw eager loop (warm-up covers the compile);
  disk_vs_resident       Engine.fit reading JPEG files through the recipe's loader (workers, persistent,
                         prefetch) over the same engine on GPU-resident batches;
  peak_memory_ratio      peak GPU memory of the engine over the raw loop's (CUDA only);
  gpu_decode_vs_cpu_decode  (models of --decode-models) Engine.fit from the same JPEG files with
                         data.decode = "gpu" (nvJPEG, batched, in the main process) over data.decode =
                         "cpu" (PIL in the loader workers); with --smoke, "auto", which is the workers on CPU.
One JSON line per figure ({"model", "figure", "value", ...}), then a table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def real_configs():
    """name -> (task, image size, batch size, () -> (config, image processor)) at published sizes."""
    import transformers as T

    def vit():
        return T.ViTConfig(image_size=224, patch_size=16), T.ViTImageProcessorPil(size={"height": 224, "width": 224})

    def convnext():
        return T.ConvNextConfig(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768]), T.ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=1.0)

    def detr():
        backbone = T.ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck", out_features=["stage4"])
        return T.DetrConfig(backbone_config=backbone, use_pretrained_backbone=False), T.DetrImageProcessorPil(size={"shortest_edge": 800, "longest_edge": 1333})

    def rt_detr():
        return T.RTDetrConfig(), T.RTDetrImageProcessorPil(size={"height": 640, "width": 640})

    def segformer():
        config = T.SegformerConfig(depths=[3, 4, 6, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768)
        return config, T.SegformerImageProcessorPil(size={"height": 512, "width": 512})

    def mask2former():
        swin = T.SwinConfig(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7, out_features=["stage1", "stage2", "stage3", "stage4"])
        return T.Mask2FormerConfig(backbone_config=swin, use_pretrained_backbone=False), T.Mask2FormerImageProcessorPil(size={"shortest_edge": 512, "longest_edge": 2048}, size_divisor=32)

    return {
        "vit-b16": ("classification", 224, 128, vit),
        "convnext-t": ("classification", 224, 128, convnext),
        "detr-r50": ("detection", 800, 8, detr),
        "rt-detr-r50": ("detection", 640, 16, rt_detr),
        "segformer-b2": ("semantic_segmentation", 512, 16, segformer),
        "mask2former-swin-s": ("semantic_segmentation", 512, 8, mask2former),
    }


# --smoke: the registry's tiny configuration of the same family, small images, batch 2.
SMOKE_FAMILIES = {"vit-b16": "vit", "convnext-t": "convnext", "detr-r50": "detr", "rt-detr-r50": "rt_detr", "segformer-b2": "segformer", "mask2former-swin-s": "mask2former"}
# Compiling on CPU takes minutes for the detection and mask models: --smoke compiles the classifiers only.
SMOKE_COMPILED = ("vit-b16",)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    p.add_argument("--models", default=",".join(SMOKE_FAMILIES), help="comma-separated, of: " + ", ".join(SMOKE_FAMILIES))
    p.add_argument("--workdir", default=None, help="checkpoints and JPEG data sets (default: a temporary folder)")
    p.add_argument("--num-workers", type=int, default=None, help="loader workers from disk (default: cores - 2, at most 12)")
    p.add_argument("--decode-models", default="segformer-b2", help="models also measured from disk with data.decode = 'gpu' (detection and semantic models only)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.decode_models = [m.strip() for m in args.decode_models.split(",") if m.strip()]
    unknown = [m for m in args.models + args.decode_models if m not in SMOKE_FAMILIES]
    if unknown:
        p.error(f"unknown --models {unknown}; choose from {', '.join(SMOKE_FAMILIES)}")
    # (steps per repetition, untimed warm-up steps, A/B repetitions, compile warm-up steps)
    args.steps, args.warmup, args.repeats, args.compile_warmup = (3, 1, 1, 1) if args.smoke else (12, 4, 2, 6) if args.quick else (20, 5, 3, 8)
    return args


def emit(rows: list, **row) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


class StepClock:
    """Engine hook: images/s over each epoch's steps after `warmup`, synchronised with the device."""

    def __init__(self, warmup: int, images_per_step: int, sync, after_epoch=None):
        self.warmup, self.images_per_step, self.sync, self.after_epoch = warmup, images_per_step, sync, after_epoch
        self.rates: list[float] = []

    def __getattr__(self, name):  # the other hook events: nothing to do
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_epoch_start(self, engine, state):
        self.steps, self.started = 0, None

    def on_step_end(self, engine, state):
        self.steps += 1
        if self.steps == self.warmup:
            self.sync()
            self.started = time.perf_counter()

    def on_epoch_end(self, engine, state):
        self.sync()
        self.rates.append((self.steps - self.warmup) * self.images_per_step / (time.perf_counter() - self.started))
        if self.after_epoch is not None:
            self.after_epoch()


class RawLoop:
    """What one writes by hand: the same model class and inputs, autocast, fused AdamW, clipping."""

    def __init__(self, model, adapter, device, precision: str):
        import copy

        import torch

        self.device = device
        # A copy of the engine's model before training: same weights, head and memory order.
        self.model = copy.deepcopy(model).to(device).train()
        self.adapter = adapter
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda")
        self.dtype = torch.bfloat16 if precision == "bf16" else None

    def step(self, batch) -> None:
        import torch

        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss, _ = self.adapter.loss(self.model(**self.adapter.model_inputs(batch)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def bench_model(name: str, args, workdir: str, device, rows: list) -> None:
    import torch
    from accelerate.utils import send_to_device

    from cvengine.adapters import adapter_class
    from cvengine.adapters.tiny import create_tiny
    from cvengine.data.demo import make_demo
    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    task, size, batch_size, make_config = real_configs()[name]
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    folder = os.path.join(workdir, name)
    num_labels = 11 if task == "semantic_segmentation" else 10  # the demo data's classes (background among them)
    if args.smoke:
        size, batch_size = 64, 2
        checkpoint = str(create_tiny(task, SMOKE_FAMILIES[name], os.path.join(folder, "model"), num_labels=num_labels))
    else:
        import transformers

        config, processor = make_config()
        config.num_labels = num_labels
        torch.manual_seed(0)
        model = getattr(transformers, adapter_class(task, config.model_type).auto_model).from_config(config)
        model.save_pretrained(os.path.join(folder, "model"))
        processor.save_pretrained(os.path.join(folder, "model"))
        del model
        checkpoint = os.path.join(folder, "model")
    distinct = 2
    demo = make_demo(os.path.join(folder, "data"), task=task, num_train=batch_size * args.steps, num_val=1, canvas=(size, size))
    channels_last = "convnext" in name or "detr" in name
    workers = args.num_workers if args.num_workers is not None else (0 if args.smoke else max(1, min(12, (os.cpu_count() or 4) - 2)))

    def recipe(decode="cpu", **train):
        return load_recipe({
            "task": task,
            "model": {"name": checkpoint},
            "data": {"batch_size": batch_size, "num_workers": workers, "persistent_workers": workers > 0, "prefetch_factor": 4 if workers else None, "check": "none", "decode": decode,
                     "train": {"images": demo["splits"]["train"]["images"], "annotations": demo["splits"]["train"]["annotations"]}},
            "augment": {"enabled": False},
            "train": {"max_epochs": args.repeats, "precision": precision, "grad_clip": 0.1, "channels_last": channels_last, "log_every_steps": 1000, "output_dir": os.path.join(folder, "runs"), **train},
        })

    def engine_with(clock, decode="cpu", **train):
        return Engine(recipe(decode, **train), callbacks=[clock], checkpoint=None, tracker=None, run_dir=os.path.join(folder, "run"), progress=False)

    # GPU-resident batches: the engine's own loader and collate, `distinct` batches cycled over the steps.
    raw_clock = StepClock(args.warmup, batch_size, sync)
    raw: dict = {}

    def raw_repetition():
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for i in range(args.steps):
            raw["loop"].step(raw["batches"][i % distinct])
            if i + 1 == args.warmup:
                sync()
                started = time.perf_counter()
        sync()
        raw_clock.rates.append((args.steps - args.warmup) * batch_size / (time.perf_counter() - started))
        raw["peak"] = torch.cuda.max_memory_allocated() if cuda else 0

    engine_peak: list[int] = []

    def after_engine_epoch():
        engine_peak.append(torch.cuda.max_memory_allocated() if cuda else 0)
        raw_repetition()
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    clock = StepClock(args.warmup, batch_size, sync, after_engine_epoch)
    engine = engine_with(clock)
    _, loader = engine._loader("train", train=True)
    batches = []
    for batch in loader:
        batches.append(send_to_device(batch, device))
        if len(batches) == distinct:
            break
    raw["batches"] = batches
    raw["loop"] = RawLoop(engine.accelerator.unwrap_model(engine.model), engine.adapter, device, precision)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    engine.fit(train_batches=[batches[i % distinct] for i in range(args.steps)])
    common = {"model": name, "device": str(device), "precision": precision, "batch": batch_size, "image_size": size, "channels_last": channels_last}
    engine_ips, raw_ips = statistics.median(clock.rates), statistics.median(raw_clock.rates)
    emit(rows, **common, figure="engine_vs_raw", value=round(statistics.median(e / r for e, r in zip(clock.rates, raw_clock.rates)), 3), engine_images_per_s=round(engine_ips, 2), raw_images_per_s=round(raw_ips, 2))
    if cuda:
        emit(rows, **common, figure="peak_memory_ratio", value=round(max(engine_peak) / raw["peak"], 3), engine_peak_gib=round(max(engine_peak) / 2**30, 2), raw_peak_gib=round(raw["peak"] / 2**30, 2))
    del raw["loop"], engine
    if cuda:
        torch.cuda.empty_cache()

    if not args.smoke or name in SMOKE_COMPILED:
        compiled_clock = StepClock(args.compile_warmup, batch_size, sync)
        compiled = engine_with(compiled_clock, max_epochs=1, compile=True, compile_backend="inductor" if cuda else "aot_eager")
        steps = max(args.steps, args.compile_warmup + args.steps - args.warmup)
        started = time.perf_counter()
        compiled.fit(train_batches=[batches[i % distinct] for i in range(steps)])
        still_compiled = hasattr(compiled.model, "_orig_mod")
        emit(rows, **common, figure="compiled_vs_raw_eager", value=round(compiled_clock.rates[0] / raw_ips, 3), compiled_images_per_s=round(compiled_clock.rates[0], 2), compiled=still_compiled, seconds_with_compile=round(time.perf_counter() - started, 1))
        del compiled
        if cuda:
            torch.cuda.empty_cache()

    # From JPEG on disk through the recipe's loader, every step a new batch of files.
    disk_clock = StepClock(args.warmup, batch_size, sync)
    from_disk = engine_with(disk_clock, max_epochs=1)
    from_disk.fit()
    emit(rows, **common, figure="disk_vs_resident", value=round(disk_clock.rates[0] / engine_ips, 3), disk_images_per_s=round(disk_clock.rates[0], 2), loader_workers=workers)
    del from_disk

    if name in args.decode_models:
        from cvengine.errors import RecipeError

        # The same files and loader, decoded on the device after the workers.
        decode_clock = StepClock(args.warmup, batch_size, sync)
        try:
            on_device = engine_with(decode_clock, decode="auto" if args.smoke else "gpu", max_epochs=1)
        except RecipeError as err:
            print(f"gpu_suite: {name}: gpu_decode_vs_cpu_decode not measured: {err}", file=sys.stderr, flush=True)
            return
        on_device.fit()
        emit(rows, **common, figure="gpu_decode_vs_cpu_decode", value=round(decode_clock.rates[0] / disk_clock.rates[0], 3), gpu_decode_images_per_s=round(decode_clock.rates[0], 2),
             cpu_decode_images_per_s=round(disk_clock.rates[0], 2), decoded_on=str(on_device.decode_device or "loader workers"), loader_workers=workers)
        del on_device


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        print("gpu_suite: no CUDA device visible; run with --smoke on CPU", file=sys.stderr)
        return 2
    print(f"device {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    workdir_ctx = tempfile.TemporaryDirectory(prefix="cvengine-gpu-suite-") if args.workdir is None else None
    workdir = args.workdir or workdir_ctx.name
    rows: list = []
    started = time.perf_counter()
    try:
        for name in args.models:
            bench_model(name, args, workdir, device, rows)
    finally:
        if workdir_ctx is not None:
            workdir_ctx.cleanup()
    figures = ("engine_vs_raw", "compiled_vs_raw_eager", "disk_vs_resident", "gpu_decode_vs_cpu_decode", "peak_memory_ratio")
    print(f"\n| model | raw images/s eager | {' | '.join(figures)} |\n|---|---|{'---|' * len(figures)}")
    for name in args.models:
        got = {r["figure"]: r for r in rows if r["model"] == name}
        raw_ips = got["engine_vs_raw"]["raw_images_per_s"]
        print(f"| {name} | {raw_ips} | " + " | ".join(str(got[f]["value"]) if f in got else "–" for f in figures) + " |")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
