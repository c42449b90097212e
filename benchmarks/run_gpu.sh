#!/usr/bin/env bash
# Engine overhead on a real-size DETR-R50 (800 px, batch 8, bf16) on one GPU: cvengine's loop
# against a hand-written loop on the same pre-collated batches. Bounded: 3 A/B repetitions of 30
# steps (8 warm-up), so the whole script, setup included, takes about a minute on one H100 and is
# cut off at 280 s in any case.
#
#   bash benchmarks/run_gpu.sh            # from the repository root, dependencies installed
#   PYTHON=.venv/bin/python bash benchmarks/run_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"   # host threads for the Hungarian matcher and setup
export NO_ALBUMENTATIONS_UPDATE=1
export TOKENIZERS_PARALLELISM=false

"$PYTHON" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if ok else 'no CUDA device'); sys.exit(0 if ok else 3)"

timeout 280 "$PYTHON" benchmarks/bench_engine_overhead.py \
    --device cuda --precision bf16 --model-size r50 --image-size 800 --batch-size 8 \
    --steps 30 --warmup 8 --repeats 3 --distinct-batches 4
