"""The estimators against hand-computed values."""

from __future__ import annotations

import math
from fractions import Fraction
from math import comb

import pytest

from agentgym.eval.stats import mean_ci, pass_at_k, pass_hat_k, summarize, t_quantile_975


@pytest.mark.parametrize(("n", "c", "k", "want"), [
    (5, 2, 1, 0.4),                 # c / n
    (5, 2, 2, 1 - 3 / 10),          # 1 - C(3,2)/C(5,2)
    (5, 2, 3, 1 - 1 / 10),          # 1 - C(3,3)/C(5,3)
    (5, 2, 4, 1.0),                 # n - c < k: every draw holds a pass
    (5, 0, 3, 0.0),
    (5, 5, 1, 1.0),
    (10, 3, 5, 1 - 21 / 252),       # 1 - C(7,5)/C(10,5) = 11/12
    (2, 1, 2, 1.0),
])
def test_pass_at_k_hand_values(n: int, c: int, k: int, want: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats() -> None:
    n, c, k = 2000, 7, 150  # C(2000, 150) ~ 1e226 would lose everything in floats
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)


@pytest.mark.parametrize(("n", "c", "k", "want"), [
    (5, 2, 1, 0.4),
    (5, 2, 2, 1 / 10),              # C(2,2)/C(5,2)
    (5, 3, 2, 3 / 10),              # C(3,2)/C(5,2)
    (5, 1, 2, 0.0),
    (4, 4, 4, 1.0),
    (10, 6, 3, 20 / 120),           # C(6,3)/C(10,3)
])
def test_pass_hat_k_hand_values(n: int, c: int, k: int, want: float) -> None:
    assert pass_hat_k(n, c, k) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("args", [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)])
def test_inconsistent_counts_raise(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        pass_at_k(*args)
    with pytest.raises(ValueError):
        pass_hat_k(*args)


def test_mean_ci_uses_student_t() -> None:
    mean, half = mean_ci([1.0, 0.0, 1.0, 0.0])
    # sd = sqrt(1/3), se = sd / 2, t(0.975, 3) = 3.1824
    assert mean == 0.5 and half == pytest.approx(3.1824 * math.sqrt(1 / 3) / 2)
    assert mean_ci([0.7]) == (0.7, pytest.approx(math.nan, nan_ok=True))
    assert all(math.isnan(x) for x in mean_ci([]))
    assert t_quantile_975(1) == 12.7062
    assert t_quantile_975(100) == pytest.approx(1.98397, abs=1e-4)
    assert t_quantile_975(10_000) == pytest.approx(1.96020, abs=1e-5)


def row(task: str, sample: int, reward: float | None, error: str | None = None,
        calls: int = 0, invalid: int = 0) -> dict:
    return {"task_id": task, "sample_index": sample, "reward": reward, "error": error,
            "passed": None if reward is None else reward >= 1.0, "tool_calls": calls,
            "invalid_tool_calls": invalid, "prompt_tokens": 10, "completion_tokens": 5,
            "latency_s": 1.0}


def test_summarize_leaves_failed_rollouts_out_of_every_score() -> None:
    rows = [row("a", 0, 1.0, calls=2), row("a", 1, 0.0, calls=1, invalid=1),
            row("a", 2, 1.0),
            row("b", 0, 0.0), row("b", 1, None, "PolicyHTTPError"), row("b", 2, 0.5),
            row("c", 0, None, "EpisodeTimeoutError"), row("c", 1, None, "PolicyHTTPError"),
            row("c", 2, None, "PolicyHTTPError")]
    s = summarize(rows)
    assert (s["rollouts"], s["tasks"], s["scored_rollouts"], s["scored_tasks"]) == (9, 3, 5, 2)
    # task means: a = 2/3, b = 0.25 (its failed sample is not a 0); c has none
    assert s["mean_reward"] == pytest.approx((2 / 3 + 0.25) / 2)
    # pass@1: a 2/3, b 0/2 -> 1/3; pass@2: a 1 - C(1,2)/C(3,2) = 1, b 0 -> 0.5;
    # pass@3: only a has 3 scored samples -> 1.0
    assert s["pass_at_k"] == {"1": pytest.approx(1 / 3), "2": pytest.approx(0.5),
                              "3": pytest.approx(1.0)}
    # pass^2: a C(2,2)/C(3,2) = 1/3, b 0 -> 1/6; pass^3: a 0
    assert s["pass_hat_k"] == {"1": pytest.approx(1 / 3), "2": pytest.approx(1 / 6),
                               "3": pytest.approx(0.0)}
    assert s["errors"] == 4 and s["error_rate"] == pytest.approx(4 / 9)
    assert s["errors_by_class"] == {"EpisodeTimeoutError": 1, "PolicyHTTPError": 3}
    assert s["tool_call_validity"] == pytest.approx(2 / 3)
    assert s["tokens_per_rollout"] == 15 and s["latency_mean_s"] == 1.0
    assert summarize(rows, k_max=1)["pass_at_k"] == {"1": pytest.approx(1 / 3)}
