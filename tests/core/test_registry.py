"""The registry: versioned ids, lazy entry points, suggestions, plugins, gymnasium.make."""

import os
import subprocess
import sys
import textwrap

import gymnasium
import pytest

import agentgym
from agentgym.errors import EntryPointError, RegistryError, UnknownEnvError
from agentgym.testing import ToyEnv


def test_unknown_id_names_close_ids():
    with pytest.raises(UnknownEnvError) as caught:
        agentgym.make("agentgym/Calculater-v0")
    assert "agentgym/Calculator-v0" in caught.value.suggestions
    assert "Did you mean: agentgym/Calculator-v0" in str(caught.value)


def test_unknown_version_suggests_the_registered_versions():
    with pytest.raises(UnknownEnvError) as caught:
        agentgym.make("agentgym/Calculator-v7")
    assert caught.value.suggestions[0] == "agentgym/Calculator-v0"


def test_nonsense_id_has_no_suggestion_and_says_so():
    with pytest.raises(UnknownEnvError) as caught:
        agentgym.make("agentgym/NoSuch-v0")
    assert "No environment registered as 'agentgym/NoSuch-v0'" in str(caught.value)


def test_register_requires_a_versioned_id():
    with pytest.raises(RegistryError, match="namespace/Name-vN"):
        agentgym.register("tests/NoVersion", "agentgym.testing:ToyEnv")


def test_reregistering_an_id_to_another_entry_point_is_refused():
    agentgym.register("tests/Toy-v0", "agentgym.testing:ToyEnv")
    agentgym.register("tests/Toy-v0", "agentgym.testing:ToyEnv")  # same target: fine
    with pytest.raises(RegistryError, match="bump the version"):
        agentgym.register("tests/Toy-v0", "agentgym.testing:FakePolicy")


def test_make_passes_defaults_and_overrides():
    agentgym.register("tests/ToyShort-v1", "agentgym.testing:ToyEnv", max_turns=2)
    env = agentgym.make("tests/ToyShort-v1")
    assert isinstance(env, ToyEnv) and env.max_turns == 2 and env.env_id == "tests/ToyShort-v1"
    assert agentgym.make("tests/ToyShort-v1", max_turns=5).max_turns == 5
    spec = agentgym.spec("tests/ToyShort-v1")
    assert (spec.name, spec.version, spec.kwargs) == ("ToyShort", 1, {"max_turns": 2})
    assert "tests/ToyShort-v1" in agentgym.list_envs()


def test_entry_points_are_lazy_and_errors_are_clear():
    agentgym.register("tests/Broken-v0", "agentgym_no_such_module:Env")
    with pytest.raises(EntryPointError, match="cannot import 'agentgym_no_such_module'"):
        agentgym.make("tests/Broken-v0")
    agentgym.register("tests/BrokenAttr-v0", "agentgym.testing:NoSuchClass")
    with pytest.raises(EntryPointError, match="has no 'NoSuchClass'"):
        agentgym.make("tests/BrokenAttr-v0")


def test_gymnasium_make_resolves_agentgym_ids():
    env = gymnasium.make("agentgym/Calculator-v0")
    try:
        obs, info = env.reset(seed=3)
        assert obs[-1]["role"] == "user" and info["task_id"].startswith("calc-train-")
    finally:
        env.close()


def test_third_party_plugin_registers_through_entry_points(tmp_path):
    dist = tmp_path / "agentgym_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: agentgym-plugin-demo\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text("[agentgym.envs]\ndemo = plugin_demo:register_envs\n")
    (tmp_path / "plugin_demo.py").write_text(textwrap.dedent("""
        import agentgym
        def register_envs():
            agentgym.register("demo/Toy-v3", "agentgym.testing:ToyEnv", max_turns=3)
    """))
    code = ("import agentgym, gymnasium; env = agentgym.make('demo/Toy-v3'); "
            "print(env.max_turns, 'demo/Toy-v3' in gymnasium.registry)")
    environ = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=environ)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "True"]


def test_a_broken_plugin_is_logged_not_fatal(tmp_path):
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[agentgym.envs]\nbad = no_such_plugin:register\n")
    code = "import agentgym; print(agentgym.list_envs())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "agentgym/Calculator-v0" in out.stdout
    assert "no_such_plugin" in out.stderr


def test_ids_registered_by_a_test_are_gone_in_the_next_one():
    agentgym.register("tests/Leaky-v0", "agentgym.testing:ToyEnv")
    assert "tests/Leaky-v0" in agentgym.list_envs()


def test_the_previous_tests_id_was_removed():
    assert "tests/Leaky-v0" not in agentgym.list_envs()
    assert "tests/Leaky-v0" not in gymnasium.registry
