"""The agentgym environment suite: one folder per task family.

This module only registers ids with lazy entry points; importing it imports no task code. It is
run through the ``agentgym.envs`` entry point (see pyproject.toml), like any third-party plugin.
"""

from agentgym.registry import register


def register_builtin_envs() -> None:
    """Register every built-in environment id."""
    register("agentgym/Calculator-v0", "agentgym.tasks.calculator.env:CalculatorEnv")
    register("agentgym/CodeHumanEval-v0", "agentgym.tasks.code.env:CodeHumanEvalEnv")
    register("agentgym/HttpAPI-v0", "agentgym.tasks.http_api.env:HttpAPIEnv")
    register("agentgym/Math-v0", "agentgym.tasks.math.env:MathEnv")
    register("agentgym/OneShotRLVR-v0", "agentgym.tasks.math.one_shot:OneShotRLVREnv")
    register("agentgym/BFCLMultiTurn-v0", "agentgym.tasks.bfcl.multi_turn:BFCLMultiTurnEnv")
    register("agentgym/BFCLSingle-v0", "agentgym.tasks.bfcl.single_turn:BFCLSingleEnv")
    register("agentgym/Search-v0", "agentgym.tasks.search.env:SearchEnv")
    register("agentgym/SearchR1-v0", "agentgym.tasks.search.env:SearchR1Env")
    register("agentgym/Support-v0", "agentgym.tasks.support.env:SupportEnv")
    register("agentgym/OpenEnv-v0", "agentgym.interop.openenv_client:OpenEnvClientEnv")
    register("agentgym/Mixture-v0", "agentgym.mixture:MixtureEnv",
             envs={"agentgym/Calculator-v0": 1.0, "agentgym/Math-v0": 1.0})
