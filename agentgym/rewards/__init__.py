"""Reward functions and the Rubric that combines them.

A reward function is pure: ``fn(trajectory, task) -> float`` (sync or async), reading only the
finished :class:`~agentgym.types.Trajectory` and its :class:`~agentgym.types.Task`. A
:class:`Rubric` weighs named components; weight-0 components are logged, not optimised.

Kinds: verifiable (:mod:`.verifiable`: exact, numeric, math-verify, final state; unit tests run
in the sandbox live with the sandbox), verbal (:mod:`.verbal`: a judge's critique mapped to a
score, constitutional principles), self-feedback (:mod:`.self_feedback`) and potential-based
shaping (:mod:`.shaping`).
"""

from agentgym.rewards.rubric import GroupReward, PerTurn, Reward, RewardFn, Rubric, Score
from agentgym.rewards.self_feedback import SelfEvaluation, answer_confidence, calibration
from agentgym.rewards.shaping import JudgeProgress, potential_shaping, shaping_terms
from agentgym.rewards.verbal import (
    Criterion,
    JudgeReward,
    constitutional_reward,
    parse_criteria,
    parse_grade,
    parse_probability,
)
from agentgym.rewards.verifiable import (
    exact_match,
    final_state_match,
    math_match,
    normalize_answer,
    numeric_match,
)

__all__ = [
    "Criterion", "GroupReward", "JudgeProgress", "JudgeReward", "PerTurn", "Reward", "RewardFn",
    "Rubric", "Score", "SelfEvaluation", "answer_confidence", "calibration",
    "constitutional_reward", "exact_match", "final_state_match", "math_match",
    "normalize_answer", "numeric_match",
    "parse_criteria", "parse_grade", "parse_probability", "potential_shaping", "shaping_terms",
]
