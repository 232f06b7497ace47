"""agentgym: agentic tool-use RL environments and the trainer that learns on them.

    import agentgym
    env = agentgym.make("agentgym/Calculator-v0")
    obs, info = env.reset(seed=0)

Importing agentgym is cheap: it never imports torch, vllm, docker or task code (registrations
are lazy ``"module:Class"`` strings).
"""

from agentgym import errors
from agentgym.env import AgentEnv
from agentgym.policy import Completion, Policy, SamplingParams
from agentgym.registry import EnvSpec, list_envs, load_plugins, make, register, spec
from agentgym.rewards import Reward, Rubric, Score
from agentgym.tools import Tool, tool
from agentgym.types import Message, Task, ToolCall, ToolResult, Trajectory, Turn

__version__ = "0.1.0"

__all__ = [
    "AgentEnv",
    "Completion",
    "EnvSpec",
    "Message",
    "Policy",
    "Reward",
    "Rubric",
    "SamplingParams",
    "Score",
    "Task",
    "Tool",
    "ToolCall",
    "ToolResult",
    "Trajectory",
    "Turn",
    "__version__",
    "errors",
    "list_envs",
    "make",
    "register",
    "spec",
    "tool",
]


def _register_plugins() -> None:
    """Load ``agentgym.envs`` entry points so ids resolve in gymnasium.make too."""
    load_plugins()


_register_plugins()
