"""Evaluation: run a policy on an env's eval split, keep the run folder, compare runs.

- :mod:`agentgym.eval.evaluation` -- ``evaluate()``: rollouts, scoring, run folders, resume.
- :mod:`agentgym.eval.endpoint` -- opens the policy under test (a URL, or a local engine).
- :mod:`agentgym.eval.runs` -- the run folder: ``results.jsonl`` rows and ``metadata.json``.
- :mod:`agentgym.eval.stats` -- mean with a 95 % interval, pass@k, pass^k, error rates.
- :mod:`agentgym.eval.leaderboard` (+ ``table``, ``leaderboard_html``) -- markdown and HTML.
- :mod:`agentgym.eval.cli` -- the ``eval``, ``leaderboard`` and ``plot`` commands.

Nothing is imported here, so ``import agentgym.eval.stats`` stays light.
"""
