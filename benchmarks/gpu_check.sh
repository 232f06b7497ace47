#!/usr/bin/env bash
# The GPU check, for any machine with a CUDA GPU, torch, transformers, peft and accelerate (no vLLM,
# no package registry needed). Prepare the bundle where pip works, then run this script there from
# the repo root with .gpu_bundle/ beside it (within about 8 minutes):
#   bash benchmarks/gpu_bundle.sh        # here: wheels + model configs/tokenizer, ~10 MiB
#   bash benchmarks/gpu_check.sh         # there: OUT=DIR keeps the logs and JSON figures
# It installs the bundle into /tmp/agentgym-site, runs the trainer and engine tests on the GPU
# (device "auto" picks CUDA), then benchmarks/trainer_vs_trl.py side by side with TRL on the same
# GPU at two configs: SmolLM2-135M (G=8, 2 prompts, <= 32 tokens) and SmolLM2-1.7B (G=8,
# 8 prompts, <= 128 tokens), both random-init, LoRA r16, bf16; it prints tokens/s ratios and peak
# GPU memory. Exit status: non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_check}
site=/tmp/agentgym-site
py=${PYTHON:-python3}
mkdir -p "$out"
status=0
step() { printf '\n== %s\n' "$*"; }

step "install the bundle"
[ -d .gpu_bundle/wheels ] || { echo "no .gpu_bundle/: run benchmarks/gpu_bundle.sh first" >&2; exit 2; }
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$site" .gpu_bundle/wheels/*.whl || exit 2
"$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" . \
  || exit 2
export PYTHONPATH=$site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import torch, transformers, peft, trl; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), '| transformers', transformers.__version__, '| peft', peft.__version__,
'| trl', trl.__version__)" || exit 2

step "trainer and engine tests on the GPU (tiny random models; vLLM, Docker and multi-process tests excluded)"
# The multi-process tests keep their gloo ranks on the CPU on purpose (one GPU cannot hold two
# NCCL ranks): they add minutes and test nothing GPU-specific here.
timeout 240 "$py" -m pytest -q -p no:cacheprovider -m "not vllm and not docker" \
  --ignore=tests/trainers/test_distributed.py --ignore=tests/trainers/test_distributed_vllm.py \
  --ignore=tests/trainers/test_fsdp.py tests/trainers tests/policies/test_hf_engine.py 2>&1 | tee "$out/tests.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "GRPO vs TRL, SmolLM2-135M architecture (G=8, 2 prompts/step, <= 32 tokens)"
timeout 200 "$py" benchmarks/trainer_vs_trl.py --device cuda --threads 8 \
  --random-init .gpu_bundle/models/smollm2-135m --steps 5 --warmup 2 \
  --json "$out/bench_135m.json" 2>&1 | tee "$out/bench_135m.log" | grep -v "^WARNING"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "GRPO vs TRL, SmolLM2-1.7B architecture (G=8, 8 prompts/step, <= 128 tokens)"
timeout 300 "$py" benchmarks/trainer_vs_trl.py --device cuda --threads 8 \
  --random-init .gpu_bundle/models/smollm2-1.7b --tasks-per-step 8 --max-tokens 128 \
  --steps 3 --warmup 1 --json "$out/bench_1_7b.json" 2>&1 | tee "$out/bench_1_7b.log" \
  | grep -v "^WARNING"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "done (status $status); logs and JSON in $out"
exit $status
