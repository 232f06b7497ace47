"""Evaluation statistics: pure functions over per-rollout result rows, no I/O, no numpy.

Estimators (``n`` samples of one task, ``c`` of them passed):

* **pass@k** -- the chance that at least one of ``k`` samples drawn without replacement from the
  ``n`` passes: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, "Evaluating Large Language Models
  Trained on Code", the unbiased estimator). Computed as ``1 - prod_{i=n-c+1..n} (1 - k/i)``,
  which never forms the huge binomials.
* **pass^k** -- the chance that all ``k`` samples pass: ``C(c, k) / C(n, k)`` (the tau-bench
  reliability metric), as the product ``prod_{i=0..k-1} (c-i)/(n-i)``.
* **mean reward with a 95 % confidence interval** -- the task is the sampling unit (rollouts of
  one task are correlated, see Miller 2024, "Adding Error Bars to Evals"): the mean over tasks
  of each task's mean reward, with a Student-t interval on those task means.

Failed rollouts (``error`` set, reward None) are infrastructure failures, never a score of 0:
they are counted in the error rates and left out of every reward statistic, so a task's ``n``
is its number of *scored* samples. A task with fewer than ``k`` scored samples does not enter
pass@k or pass^k for that ``k``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["mean_ci", "pass_at_k", "pass_hat_k", "summarize", "summarize_by_env",
           "t_quantile_975"]

# Two-sided 95 % Student-t quantiles (t_{0.975, df}) for df = 1..30.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
_Z975 = 1.959963984540054


def _check(n: int, c: int, k: int) -> None:
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task: ``1 - C(n-c, k) / C(n, k)``.

    Args:
        n: scored samples of the task.
        c: how many of them passed.
        k: the budget of attempts (1 <= k <= n).

    Raises:
        ValueError: the counts are inconsistent.
    """
    _check(n, c, k)
    if n - c < k:  # every draw of k holds at least one pass
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k for one task: the chance that ``k`` samples drawn from ``n`` all pass.

    Raises:
        ValueError: the counts are inconsistent.
    """
    _check(n, c, k)
    if c < k:
        return 0.0
    product = 1.0
    for i in range(k):
        product *= (c - i) / (n - i)
    return product


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95 %).

    Exact table values up to 30 degrees of freedom, then the Cornish-Fisher expansion around
    the normal quantile (error below 1e-4 there).
    """
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95 % Student-t confidence interval.

    Returns ``(nan, nan)`` for no values and ``(value, nan)`` for one (no spread to measure).
    """
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, t_quantile_975(n - 1) * math.sqrt(variance / n)


def _by_task(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    tasks: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        tasks[str(row["task_id"])].append(row)
    return tasks


def _pass_rates(scored: Mapping[str, list[Mapping[str, Any]]],
                k_max: int) -> tuple[dict[int, float], dict[int, float]]:
    """Mean pass@k and pass^k over the tasks with at least k scored samples, for k <= k_max."""
    at_k: dict[int, float] = {}
    hat_k: dict[int, float] = {}
    for k in range(1, k_max + 1):
        counts = [(len(r), sum(bool(x["passed"]) for x in r)) for r in scored.values()
                  if len(r) >= k]
        if counts:
            at_k[k] = math.fsum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
            hat_k[k] = math.fsum(pass_hat_k(n, c, k) for n, c in counts) / len(counts)
    return at_k, hat_k


def summarize(rows: Sequence[Mapping[str, Any]], k_max: int | None = None) -> dict[str, Any]:
    """Aggregate result rows (one per rollout) into the numbers ``agentgym eval`` reports.

    A row needs ``task_id``, ``reward`` (None when the rollout failed), ``passed``, ``error``
    (the error class name or None), ``tool_calls``, ``invalid_tool_calls``, ``prompt_tokens``,
    ``completion_tokens`` and ``latency_s``.

    Args:
        rows: result rows, any order.
        k_max: largest k for pass@k / pass^k (default: the most samples any task has).

    Returns:
        A JSON-able dict: counts, ``mean_reward`` and ``ci95`` (half-width), ``pass_at_k`` and
        ``pass_hat_k`` (``{k: value}`` with string keys), ``tool_call_validity``, ``error_rate``
        and ``errors_by_class``, token totals and means, and latency.
    """
    tasks = _by_task(rows)
    scored = {t: [r for r in rs if r.get("error") is None and r.get("reward") is not None]
              for t, rs in tasks.items()}
    scored = {t: rs for t, rs in scored.items() if rs}
    task_means = [math.fsum(float(r["reward"]) for r in rs) / len(rs) for rs in scored.values()]
    mean, half = mean_ci(task_means)
    k_max = k_max if k_max is not None else max((len(rs) for rs in tasks.values()), default=0)
    at_k, hat_k = _pass_rates(scored, k_max)
    errors = Counter(str(r["error"]) for r in rows if r.get("error") is not None)
    calls = sum(int(r.get("tool_calls") or 0) for r in rows)
    invalid = sum(int(r.get("invalid_tool_calls") or 0) for r in rows)
    prompt = sum(int(r.get("prompt_tokens") or 0) for r in rows)
    completion = sum(int(r.get("completion_tokens") or 0) for r in rows)
    latencies = [float(r["latency_s"]) for r in rows if r.get("latency_s") is not None]
    n = len(rows)
    return {
        "rollouts": n, "tasks": len(tasks), "scored_rollouts": sum(map(len, scored.values())),
        "scored_tasks": len(scored), "mean_reward": mean, "ci95": half,
        "pass_at_k": {str(k): v for k, v in at_k.items()},
        "pass_hat_k": {str(k): v for k, v in hat_k.items()},
        "tool_calls": calls, "invalid_tool_calls": invalid,
        "tool_call_validity": (calls - invalid) / calls if calls else math.nan,
        "errors": sum(errors.values()), "error_rate": sum(errors.values()) / n if n else math.nan,
        "errors_by_class": dict(sorted(errors.items())),
        "error_rate_by_class": {e: c / n for e, c in sorted(errors.items())},
        "prompt_tokens": prompt, "completion_tokens": completion,
        "tokens_per_rollout": (prompt + completion) / n if n else math.nan,
        "latency_mean_s": math.fsum(latencies) / len(latencies) if latencies else math.nan,
    }


def summarize_by_env(rows: Sequence[Mapping[str, Any]],
                     k_max: int | None = None) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per ``env_id`` of the rows, for a run over a mixture of envs
    (:mod:`agentgym.mixture`); ``{}`` when the rows come from one env."""
    by_env: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_env.setdefault(str(row.get("env_id")), []).append(row)
    if len(by_env) < 2:
        return {}
    return {env: summarize(env_rows, k_max) for env, env_rows in sorted(by_env.items())}
