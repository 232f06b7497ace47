#!/usr/bin/env bash
# Build .gpu_bundle/ (git-ignored) for benchmarks/gpu_check.sh: what a CUDA machine that has torch,
# transformers, peft and accelerate but no vLLM and no package registry lacks, in tens of MiB:
#   - wheels (Python 3.12, manylinux x86-64) of agentgym's missing dependencies and of TRL (the
#     benchmark's baseline), at the versions of .ci/constraints.lock where the lock has them;
#   - models/smollm2-135m and models/smollm2-1.7b: config.json (benchmarks/configs/) plus the
#     SmolLM2 tokenizer and chat template from the prepared model. No weights: gpu_check.sh
#     random-inits them on the GPU machine.
# Run here, from anywhere in the repo:  bash benchmarks/gpu_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
bundle=.gpu_bundle
grep -qx "/$bundle/" .git/info/exclude 2>/dev/null || echo "/$bundle/" >> .git/info/exclude
rm -rf "$bundle"
mkdir -p "$bundle/wheels" "$bundle/models"

locked() {  # NAME -> NAME==VERSION from the lock
  local line
  line=$(grep -i "^$1==" .ci/constraints.lock) || { echo "$1 is not in .ci/constraints.lock" >&2; exit 1; }
  echo "$line"
}
wheels=(
  "$(locked gymnasium)" "$(locked Farama-Notifications)" "$(locked jsonschema)"
  "$(locked jsonschema-specifications)" "$(locked referencing)" "$(locked rpds-py)"
  "$(locked pytest-asyncio)" "$(locked dill)"
  "$(locked trl)" "$(locked datasets)" "$(locked multiprocess)"   # the baseline (interop extra)
)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$bundle/wheels" "${wheels[@]}"

prepared=$("$py" -c "from agentgym.policies.model_prep import prepare_model; print(prepare_model())")
for name in smollm2-135m smollm2-1.7b; do
  mkdir -p "$bundle/models/$name"
  cp "benchmarks/configs/$name/config.json" "$bundle/models/$name/"
  cp "$prepared"/{tokenizer.json,tokenizer_config.json,chat_template.jinja} "$bundle/models/$name/"
done
du -sh "$bundle"
echo "bundle ready: run benchmarks/gpu_check.sh on the GPU machine with $bundle carried"
