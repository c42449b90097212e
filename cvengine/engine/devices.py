"""Devices and precision: the Accelerator a run uses, and the loader workers' thread settings."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from cvengine.errors import CvengineError, RecipeError


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """Recipe precision -> Accelerate's mixed_precision, refusing what the device cannot do well."""
    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if bf16_ok else "no"
    if precision == "fp32":
        return "no"
    if precision == "fp16":
        if not cuda:
            raise RecipeError("train.precision = 'fp16' needs a CUDA GPU: on CPU it would silently run in fp32. Use 'auto' or 'fp32'.")
        return "fp16"
    if cuda and not bf16_ok:
        raise RecipeError("train.precision = 'bf16': this GPU has no bf16 support. Use 'fp16' or 'auto'.")
    if not cuda and not _cpu_has_fast_bf16():
        raise RecipeError("train.precision = 'bf16': this CPU has no bf16 instructions (AVX512-BF16/AMX), where bf16 runs several times slower than fp32. Use 'auto' or 'fp32'.")
    return "bf16"


def build_accelerator(train):
    """The Accelerator of a run from its [train] section; one per process (Accelerate keeps a
    process-wide state, reset here when this process is a run of its own).

    DDP's find_unused_parameters starts off (searching every step's autograd graph for parameters
    without a gradient costs each step); `use_unused_parameter_search` switches it on for a model
    family that needs it. train.compile: Accelerate compiles the model in prepare()."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, TorchDynamoPlugin

    mixed_precision = resolve_precision(train.precision)
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    if launched_world == 1:
        # Accelerate keeps one process-wide state; several engines in one process each get a fresh one.
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=train.accumulate,
        cpu=not torch.cuda.is_available(),
        step_scheduler_with_optimizer=False,
        # non_blocking: host-to-device copies of pinned batches overlap the previous step's GPU work.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=train.seed, non_blocking=torch.cuda.is_available()),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        # dynamic=True: one graph for every image size of detection batches instead of one compile per size.
        dynamo_plugin=TorchDynamoPlugin(backend=train.compile_backend, dynamic=True) if train.compile else None,
    )
    if launched_world > 1 and accelerator.num_processes != launched_world:
        raise CvengineError(f"launched with WORLD_SIZE={launched_world} but Accelerate joined {accelerator.num_processes} process(es); use `accelerate launch --multi_gpu` or `torchrun`")
    return accelerator


def use_unused_parameter_search(accelerator, needed: bool) -> None:
    """DDP's find_unused_parameters for the model prepared next (the adapter's `unused_parameters`):
    without it, a step whose forward leaves a parameter unused fails under several processes."""
    accelerator.ddp_handler.find_unused_parameters = needed


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def size_host_threads(num_workers: int, local_processes: int = 1) -> int | None:
    """Torch's intra-op threads in this process so that they and the loader workers share the cores
    of this machine's processes without oversubscribing them (each worker decodes on one core):
    cores / local processes - workers, at least 1. Left alone (None) when the user chose a count with
    OMP_NUM_THREADS."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    threads = max(1, available_cores() // max(1, local_processes) - num_workers)
    torch.set_num_threads(threads)
    return threads


def worker_init(_worker_id: int) -> None:
    # One loader worker = one core: keep OpenCV and torch from spawning threads inside it.
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
