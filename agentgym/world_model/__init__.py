"""LLMs as world models of environments' tools: simulate tool calls, measure the fidelity.

* :mod:`agentgym.world_model.simulator` -- :func:`simulate_tools` (``make(id,
  simulate_tools={...})``): episodes whose tool results a model predicts.
* :mod:`agentgym.world_model.fidelity` -- :func:`fidelity`: the share of predicted tool results
  that match the real ones on recorded trajectories, per tool, with 95 % intervals.
* ``agentgym world-model fidelity`` -- the same from the command line.
"""

from agentgym.world_model.fidelity import FidelityReport, ToolFidelity, fidelity, normalise
from agentgym.world_model.simulator import (
    SIMULATED_COMPONENT,
    SimulatedToolBox,
    SimulatorError,
    ToolSimulator,
    simulate_tools,
)

__all__ = ["SIMULATED_COMPONENT", "FidelityReport", "SimulatedToolBox", "SimulatorError",
           "ToolFidelity", "ToolSimulator", "fidelity", "normalise", "simulate_tools"]
