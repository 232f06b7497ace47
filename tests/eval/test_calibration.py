"""Calibration reporting of eval runs: the metrics against hand-computed values."""

import pytest

from agentgym.eval.calibration import (
    bootstrap_ci,
    calibration_summary,
    confidence_pairs,
    wilson_interval,
)


def test_wilson_interval_matches_hand_computed_values():
    # 0/50: lower 0, upper (z^2/n) / (1 + z^2/n) = 0.076829 / 1.076829
    low, high = wilson_interval(0, 50)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.071348, abs=1e-6)
    low, high = wilson_interval(5, 10)  # symmetric around 0.5
    assert (low, high) == (pytest.approx(0.236593, abs=1e-6), pytest.approx(0.763407, abs=1e-6))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def rows(pairs, key="confidence"):
    return [{"task_id": f"t{i}", "error": None, "reward": c,
             "reward_components": {key: p, "correct": c}} for i, (p, c) in enumerate(pairs)]


def test_calibration_summary_against_hand_computed_ece_and_brier():
    # one rollout per bin: ECE = mean |p - y| = (0.1 + 0.8 + 0.3 + 0.9) / 4
    summary = calibration_summary(rows([(0.9, 1.0), (0.8, 0.0), (0.3, 0.0), (0.1, 1.0)]))
    assert summary["n"] == 4 and summary["accuracy"] == 0.5
    assert summary["ece"] == pytest.approx(0.525)
    assert summary["brier"] == pytest.approx((0.01 + 0.64 + 0.09 + 0.81) / 4)
    assert summary["accuracy_ci95"] == pytest.approx(wilson_interval(2, 4))
    # one shared bin [0.6, 0.7): ECE = |mean p - accuracy| = |0.65 - 2/3|
    shared = calibration_summary(rows([(0.62, 1.0), (0.68, 0.0), (0.65, 1.0)]))
    assert shared["ece"] == pytest.approx(abs(0.65 - 2 / 3))
    assert shared["brier"] == pytest.approx((0.38 ** 2 + 0.68 ** 2 + 0.35 ** 2) / 3)
    low, high = shared["brier_ci95"]
    assert 0.0 <= low <= shared["brier"] <= high


def test_failed_and_unscored_rows_are_left_out_not_counted_wrong():
    data = rows([(0.9, 1.0), (0.2, 0.0)])
    data.append({"task_id": "x", "error": "PolicyTimeoutError", "reward": None,
                 "reward_components": {}})
    data.append({"task_id": "y", "error": None, "reward": 1.0,
                 "reward_components": {"correct": 1.0}})  # no confidence recorded
    confidences, outcomes = confidence_pairs(data, "confidence", "correct")
    assert confidences == [0.9, 0.2] and outcomes == [True, False]
    assert calibration_summary(data[2:]) is None


def test_bootstrap_is_seeded_and_brackets_a_perfect_score():
    confidences, outcomes = [1.0, 0.0, 1.0, 0.0], [True, False, True, False]
    assert bootstrap_ci(confidences, outcomes, "brier") == (0.0, 0.0)
    noisy = [0.9, 0.4, 0.7, 0.2, 0.6], [True, False, False, True, True]
    assert bootstrap_ci(*noisy, "ece", seed=3) == bootstrap_ci(*noisy, "ece", seed=3)


def test_eval_command_prints_wilson_pass_rate_and_calibration(capsys):
    from agentgym.eval.cli import print_accuracy

    data = [{**row, "passed": row["reward_components"]["correct"] >= 1.0}
            for row in rows([(0.9, 1.0), (0.8, 0.0), (0.3, 0.0), (0.1, 1.0)])]
    print_accuracy(data, "confidence", "correct")
    out = " ".join(capsys.readouterr().out.split())
    low, high = wilson_interval(2, 4)
    assert f"pass rate 2/4 = 0.500 (Wilson 95% CI {low:.3f}-{high:.3f})" in out
    assert "ECE 0.525" in out and "Brier 0.388" in out
    print_accuracy(data, "self_evaluation", "correct")  # no such component: no calibration line
    out = capsys.readouterr().out
    assert "pass rate 2/4" in out and "calibration" not in out
