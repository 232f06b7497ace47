"""Importing agentgym stays cheap, and its public surface changes only on purpose."""

import json
import subprocess
import sys

import agentgym

HEAVY = ["torch", "vllm", "docker", "transformers", "peft", "bm25s", "agentgym.sandbox",
         "agentgym.trainers", "agentgym.tasks.calculator"]


def test_import_agentgym_loads_no_heavy_module():
    code = ("import sys, json, agentgym; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_subpackages_import_through_package_dir_mapping():
    code = "import agentgym.tasks, agentgym.trainers, agentgym.sandbox; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_public_api_is_frozen():
    assert sorted(agentgym.__all__) == [
        "AgentEnv", "Completion", "EnvSpec", "Message", "Policy", "Reward", "Rubric",
        "SamplingParams", "Score", "Task", "Tool", "ToolCall", "ToolResult", "Trajectory",
        "Turn", "__version__", "errors", "list_envs", "make", "register", "spec", "tool"]
    for name in agentgym.__all__:
        assert hasattr(agentgym, name), name


def test_every_error_has_a_blame_and_sits_under_the_root():
    from agentgym import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and cls is not errors.ErrorRecord:
            assert issubclass(cls, errors.AgentGymError), name
            assert cls.blame in ("model", "infra", "user"), name
            assert name in errors.__doc__, f"{name} missing from the tree in errors.py"


def test_errors_exports_every_error_class_the_record_and_nothing_else():
    from agentgym import errors

    defined = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, errors.AgentGymError)}
    assert sorted(errors.__all__) == sorted(defined | {"Blame", "ErrorRecord"})
