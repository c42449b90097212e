"""Training throughput of cvengine's loop against a hand-written PyTorch loop, on the same batches.

    python benchmarks/bench_engine_overhead.py                       # CPU: small DETR, 128 px, batch 2
    python benchmarks/bench_engine_overhead.py --device cuda --precision bf16 \
        --model-size r50 --image-size 800 --batch-size 8             # GPU: real-size DETR-R50

(a) cvengine: `Engine(recipe, tracker=None, checkpoint=None, progress=False).fit()` on a recipe
    without a validation split. Its train data path is swapped for a list of PRE-COLLATED batches
    (the task's `build_dataset` returns them, the adapter's collate unwraps them), so the loader costs
    only what Accelerate's prepared DataLoader itself costs: sampler, device transfer.
(b) hand-written: the same model loaded from the same checkpoint folder, fused AdamW (as the engine), and per batch
    to(device, non_blocking) → normalise → forward (autocast when bf16/fp16) → loss → backward →
    clip_grad_norm_ → step → zero_grad.

Both see the same batches (pinned when on CUDA), built once by cvengine's own dataset and collate from
a small digits data set written at the model's input size (the resize is then a no-op). The model is
random-init, written once as a checkpoint folder (DETR with a transformers ResNet backbone: no timm,
no hub).

Each repetition is one engine epoch (`--steps` steps, the first `--warmup` not timed) followed by
one hand-written repetition of the same length, run from the engine's `on_epoch_end`: the two
alternate A/B/A/B in one warm process. The clock of each repetition starts after the warm-up steps
and stops after the last step, with a device synchronisation at both ends only. Both wall time and
this process's CPU time are taken; on CPU the ratio comes from CPU time by default (`--clock`), which
other processes on a shared machine disturb far less than wall time. Reported: median images/s of
each and the median of the per-repetition ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (backbone ResNetConfig arguments, DETR arguments) per --model-size.
MODEL_SIZES = {
    # create_tiny's model: steps of a few ms, where fixed per-step costs dominate.
    "tiny": (
        dict(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic"),
        dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=20),
    ),
    # ResNet-18 depths and widths, a 2+2-layer transformer of width 128: ~50-100 ms steps on one CPU core.
    "small": (
        dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic"),
        dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, num_queries=50),
    ),
    # DETR-R50 as published: ResNet-50 (bottleneck 3-4-6-3), 6+6 layers of width 256, 100 queries.
    "r50": (
        dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck"),
        dict(d_model=256, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_queries=100),
    ),
}
FAMILIES = ("detr", "conditional_detr")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--family", choices=FAMILIES, default="detr")
    p.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="small")
    p.add_argument("--image-size", type=int, default=128, help="square input side, pixels")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="steps per repetition, warm-up included")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each repetition")
    p.add_argument("--repeats", type=int, default=3, help="A/B repetition pairs")
    p.add_argument("--distinct-batches", type=int, default=4, help="batches cycled through by both loops")
    p.add_argument("--grad-clip", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--clock", choices=("wall", "cpu"), default=None, help="what the ratio is computed from; default: wall on CUDA, this process's CPU time on CPU (robust to other processes sharing the cores)")
    p.add_argument("--workdir", default=None, help="data set, checkpoint and run folder (default: a temporary folder)")
    args = p.parse_args()
    if args.warmup >= args.steps:
        p.error("--warmup must be smaller than --steps")
    return args


def write_checkpoint(family: str, size: str, image_size: int, num_labels: int, out_dir: str) -> str:
    """A random-init checkpoint folder whose processor resizes to `image_size` (a no-op on our images)."""
    import torch
    import transformers as T

    backbone_args, detr_args = MODEL_SIZES[size]
    backbone = T.ResNetConfig(out_features=["stage4"], **backbone_args)
    config_cls, processor_cls = {"detr": (T.DetrConfig, T.DetrImageProcessorPil), "conditional_detr": (T.ConditionalDetrConfig, T.ConditionalDetrImageProcessorPil)}[family]
    config = config_cls(backbone_config=backbone, num_labels=num_labels, use_pretrained_backbone=False, **detr_args)
    # DETR's 800/1333 ratio kept, so a square image of `image_size` is not resized.
    processor = processor_cls(size={"shortest_edge": image_size, "longest_edge": int(round(image_size * 1333 / 800))})
    torch.manual_seed(0)
    model = T.AutoModelForObjectDetection.from_config(config)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def pin(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: pin(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [pin(v) for v in obj]
    return obj


def to_device(obj, device):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    return obj


def make_batches(index, adapter, batch_size: int, count: int, pinned: bool) -> list[dict]:
    """`count` batches through cvengine's own dataset and collate (no augmentation)."""
    from cvengine.tasks.detection.dataset import CocoDetectionDataset

    dataset = CocoDetectionDataset(index, augment=None, resize=adapter.resize)
    batches = []
    for b in range(count):
        samples = [dataset[(b * batch_size + j) % len(dataset)] for j in range(batch_size)]
        batch = adapter.collate(samples)
        batches.append(pin(batch) if pinned else batch)
    return batches


class PrecollatedBatches:
    """A map-style data set of `steps` items cycling over already collated batches."""

    def __init__(self, batches: list[dict], steps: int):
        self.batches, self.steps = batches, steps

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


class PrecollatedTask:
    """The engine's task, except that the train split is the pre-collated batches."""

    def __init__(self, task, dataset: PrecollatedBatches):
        self._task, self._dataset = task, dataset

    def __getattr__(self, name):
        return getattr(self._task, name)

    def build_dataset(self, recipe, index, adapter, train: bool):
        return self._dataset


def _unwrap(items: list[dict]) -> dict:
    # The loader's batch_size is 1 and its one item is already a whole batch.
    return items[0]


class HandWritten:
    """The reference: what one would write by hand around the same model and batches."""

    def __init__(self, checkpoint: str, device, precision: str, lr: float, grad_clip: float, normalizer):
        import torch
        from transformers import AutoModelForObjectDetection

        self.device = torch.device(device)
        self.model = AutoModelForObjectDetection.from_pretrained(checkpoint).to(self.device).train()
        # The same AdamW kernel the engine picks (fused), so that the ratio measures the loop around it.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=1e-4, fused=True)
        self.grad_clip = grad_clip
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        self.scale = normalizer.scale.to(self.device)
        self.shift = normalizer.shift.to(self.device)

    def step(self, batch: dict):
        import torch

        batch = to_device(batch, self.device)
        pixel_mask = batch["pixel_mask"]
        pixel_values = (batch["pixels_uint8"].float() * self.scale + self.shift) * pixel_mask.unsqueeze(1)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=batch["labels"])
        loss = outputs.loss
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def make_sync(device: str):
    import torch

    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def main() -> int:
    args = parse_args()
    if args.device == "cpu":
        # The engine picks CUDA whenever it sees a GPU: hide it before torch is imported.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import transformers

    transformers.utils.logging.disable_progress_bar()

    from cvengine.adapters import adapter_class
    from cvengine.data.coco import CocoIndex
    from cvengine.data.demo import make_demo
    from cvengine.engine.hooks import Callback
    from cvengine.engine.loop import Engine
    from cvengine.recipe import load_recipe

    sync = make_sync(device)
    workdir_ctx = tempfile.TemporaryDirectory(prefix="cvengine-bench-") if args.workdir is None else None
    workdir = args.workdir or workdir_ctx.name
    os.makedirs(workdir, exist_ok=True)
    try:
        num_images = args.batch_size * args.distinct_batches
        t0 = time.perf_counter()
        demo = make_demo(os.path.join(workdir, "data"), num_train=num_images, num_val=1, canvas=(args.image_size, args.image_size))
        checkpoint = write_checkpoint(args.family, args.model_size, args.image_size, 10, os.path.join(workdir, "model"))
        print(f"setup: {num_images} images of {args.image_size}x{args.image_size}, {args.family} '{args.model_size}' checkpoint written in {time.perf_counter() - t0:.1f} s")

        recipe = load_recipe(
            {
                "task": "detection",
                "model": {"name": checkpoint, "pretrained": True},
                # batch_size 1: each loader item is one pre-collated batch of --batch-size images.
                "data": {"batch_size": 1, "num_workers": 0, "train": {"images": demo["splits"]["train"]["images"], "annotations": demo["splits"]["train"]["annotations"]}},
                "augment": {"enabled": False},
                "train": {"max_epochs": args.repeats, "lr": args.lr, "grad_clip": args.grad_clip, "precision": args.precision, "output_dir": os.path.join(workdir, "runs")},
            }
        )

        # Per repetition, {"wall": images/s, "cpu": images/s}.
        engine_rates: list[dict] = []
        hand_rates: list[dict] = []
        timed_images = (args.steps - args.warmup) * args.batch_size

        def rates(started: tuple[float, float]) -> dict:
            return {"wall": timed_images / (time.perf_counter() - started[0]), "cpu": timed_images / (time.process_time() - started[1])}
        state: dict = {}

        def run_hand_repetition():
            hand, batches = state["hand"], state["batches"]
            for i in range(args.steps):
                hand.step(batches[i % len(batches)])
                if i + 1 == args.warmup:
                    sync()
                    started = (time.perf_counter(), time.process_time())
            sync()
            hand_rates.append(rates(started))

        class Clock(Callback):
            """Times the engine's steps after the warm-up; then runs one hand-written repetition."""

            def on_epoch_start(self, engine, st):
                self.steps = 0

            def on_step_end(self, engine, st):
                self.steps += 1
                if self.steps == args.warmup:
                    sync()
                    self.started = (time.perf_counter(), time.process_time())
                elif self.steps == args.steps:
                    sync()
                    engine_rates.append(rates(self.started))

            def on_epoch_end(self, engine, st):
                run_hand_repetition()
                e, h = engine_rates[-1], hand_rates[-1]
                print(f"repetition {len(hand_rates)}: images/s wall / cpu-time: cvengine {e['wall']:.2f} / {e['cpu']:.2f}, hand-written {h['wall']:.2f} / {h['cpu']:.2f}, ratio {e['wall'] / h['wall']:.3f} / {e['cpu'] / h['cpu']:.3f}", flush=True)

        engine = Engine(recipe, callbacks=[Clock()], checkpoint=None, tracker=None, run_dir=os.path.join(workdir, "run"), progress=False)
        if engine.accelerator.device.type != device:
            print(f"the engine chose {engine.accelerator.device}, not {device}", file=sys.stderr)
            return 2
        # The same adapter code collates for both loops; the model is only inspected for its inputs.
        adapter = adapter_class("detection", engine.model_family)(engine.accelerator.unwrap_model(engine.model), engine.processor)
        batches = make_batches(CocoIndex.load(demo["splits"]["train"]["annotations"], demo["splits"]["train"]["images"]), adapter, args.batch_size, args.distinct_batches, pinned=device == "cuda")
        engine.task = PrecollatedTask(engine.task, PrecollatedBatches(batches, args.steps))
        engine.adapter.collate = _unwrap
        state["batches"] = batches
        state["hand"] = HandWritten(checkpoint, device, args.precision, args.lr, args.grad_clip, engine.adapter.normalize)

        shape = tuple(batches[0]["pixels_uint8"].shape)
        params = sum(p.numel() for p in state["hand"].model.parameters()) / 1e6
        print(f"device {device}, precision {args.precision}, {args.family} '{args.model_size}' ({params:.1f} M parameters), batches {shape}, {args.steps} steps per repetition ({args.warmup} warm-up), {args.repeats} repetitions")
        engine.fit()

        clock = args.clock or ("wall" if device == "cuda" else "cpu")
        for name in ("wall", "cpu"):
            engine_ips = statistics.median(r[name] for r in engine_rates)
            hand_ips = statistics.median(r[name] for r in hand_rates)
            ratio = statistics.median(e[name] / h[name] for e, h in zip(engine_rates, hand_rates))
            label = "wall" if name == "wall" else "CPU time"
            print(f"{label}: cvengine {engine_ips:.2f} images/s ({1000 * args.batch_size / engine_ips:.1f} ms/step), hand-written {hand_ips:.2f} images/s ({1000 * args.batch_size / hand_ips:.1f} ms/step), median ratio {ratio:.3f}")
        ratio = statistics.median(e[clock] / h[clock] for e, h in zip(engine_rates, hand_rates))
        print(f"ratio cvengine/handwritten images_per_s: {ratio:.2f}  ({clock} clock)")
        return 0
    finally:
        if workdir_ctx is not None:
            workdir_ctx.cleanup()


if __name__ == "__main__":
    sys.exit(main())
