#!/usr/bin/env bash
# GPU check for the LLM engine's CUDA paths, run on a lent GPU host whose Python already has
# torch (CUDA) but not every pin of ours: carried wheels go to /tmp/site first.
#   OUT=dir bash benchmarks/gpu_check.sh
# 1. the CUDA tests (bf16, bitsandbytes int8/nf4, LoRA on GPU) - the same engine code CI runs on CPU;
# 2. benchmarks/gpu_llm_nf4.py: a 1B-class Llama in nf4 and bf16, eager and compiled decode
#    (compile = "decode"), 32 streams, against model.generate on the same host: tokens/s, peak memory.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD:$PWD/clients/python PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -c "import torch, transformers, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__)" | tee "$OUT/versions.txt"
# --confcutdir: tests/conftest.py starts daemons (grpc health, reflection) the GPU image lacks.
python3 -m pytest -q --confcutdir=tests/llm -p no:cacheprovider tests/llm/test_llm_gpu.py 2>&1 | tail -25 | tee "$OUT/gpu-tests.txt"
python3 benchmarks/gpu_llm_nf4.py --json "$OUT/gpu-llm-nf4.json" 2>&1 | grep -v "it/s\]" | tail -40 | tee "$OUT/gpu-llm-nf4.txt"
