"""Language-conditioned generalisation splits of HttpAPI-v0: held-out phrasings and held-out
compositions of the goal.

* ``eval_paraphrase``: the ``eval`` tasks (same shops, same goals, same reference solutions,
  task for task), each instruction rephrased with a held-out template
  (:data:`~agentgym.tasks.http_api.scenarios.PARAPHRASES`) that no train instruction uses. The
  gap between ``eval`` and ``eval_paraphrase`` is the cost of the wording alone.
* ``eval_composition``: goals that combine two actions of different kinds in one episode
  ("1) restock ... 2) cancel ..."), phrased with the train templates. The train split has only
  single-action goals, so every combination is one never seen in training: the split measures
  whether skills learned one at a time compose.

Both use the eval customers, so no instruction of either split occurs in train. A composed goal
names disjoint products and customers in its two parts (so one part cannot change what the
other means, e.g. "the most recent order"), and its reference solution, the two parts' requests
in order, must succeed; a draw that breaks either rule is redrawn (deterministically).
"""

from __future__ import annotations

import dataclasses
import random
import re
from itertools import count

from agentgym.tasks.http_api.scenarios import (
    _KINDS,
    CUSTOMERS,
    PRODUCTS,
    TEMPLATES,
    Scenario,
    _catalog,
    _set_totals,
    split_scenarios,
)
from agentgym.tasks.splits import distinct_draws

__all__ = ["composition_scenarios", "make_composition", "paraphrase_scenarios"]

_QUOTED = re.compile(r"'([^']+)'")


def paraphrase_scenarios(n: int, train_size: int) -> list[Scenario]:
    """The first ``n`` eval scenarios with their held-out phrasing as the instruction."""
    return [dataclasses.replace(s, instruction=s.paraphrase)
            for s in split_scenarios("eval", n, train_size)]


def _named(instruction: str) -> tuple[set[str], set[str]]:
    """(products, customers) an instruction names."""
    return ({p for p in PRODUCTS if p in instruction},
            {c.removeprefix("walk-in ") for c in _QUOTED.findall(instruction)})


def _draw(rng: random.Random) -> Scenario | None:
    """One composed scenario, or None when the draw breaks a rule (see the module docs)."""
    products, orders = _catalog(rng, CUSTOMERS["eval"])
    first, second = rng.sample(sorted(_KINDS), 2)
    parts = [_KINDS[kind](rng, products, orders) for kind in (first, second)]
    texts = [TEMPLATES[kind].format(**fields) for kind, (fields, _) in zip(
        (first, second), parts, strict=True)]
    (products_a, customers_a), (products_b, customers_b) = _named(texts[0]), _named(texts[1])
    if products_a & products_b or customers_a & customers_b:
        return None
    _set_totals(products, orders)
    scenario = Scenario(f"{first}+{second}", f"Do two things, in this order. 1) {texts[0]} "
                        f"2) {texts[1]}", {"products": products, "orders": orders},
                        (*parts[0][1], *parts[1][1]))
    try:
        scenario.expected_outcome()
    except RuntimeError:  # a part's request fails after the other part: redraw
        return None
    return scenario


def make_composition(split: str, index: int) -> Scenario:
    """Composed scenario ``index`` (deterministic: the first valid draw of its seed stream)."""
    for attempt in count():
        scenario = _draw(random.Random(f"http_api:{split}:{index}:{attempt}"))
        if scenario is not None:
            return scenario
    raise AssertionError("unreachable")


def composition_scenarios(n: int, train_size: int) -> list[Scenario]:
    """The first ``n`` composed scenarios with distinct instructions."""
    return distinct_draws(make_composition, lambda s: s.instruction, "eval_composition", n,
                          train_size)
