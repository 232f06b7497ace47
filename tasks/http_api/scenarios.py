"""Seeded shop tasks: an instruction, a starting state, and the requests that solve it.

Every scenario makes the agent discover ids through the API (instructions name products and
customers, never ids) and several exercise failure paths it must handle: not enough stock (409),
an out-of-stock item to leave out (409), money in integer cents (422 if sent as dollars). The
expected end state is computed by replaying the reference requests against a copy of the
starting state through the same routes the server uses.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentgym.tasks.http_api.server import dispatch, routes_for
from agentgym.tasks.http_api.store import Store
from agentgym.tasks.splits import distinct_draws

__all__ = ["Scenario", "make_scenario", "split_scenarios"]

PRODUCTS = ("blue mug", "desk lamp", "notebook", "usb cable", "water bottle", "backpack",
            "headphones", "pencil set", "phone stand", "wall clock")
# Customers differ between splits, so eval instructions never repeat train ones.
CUSTOMERS = {"train": ("alice", "bruno", "chiara", "deepak", "elena", "farid", "greta", "hiro",
                       "ines", "jonas", "kemal", "lena"),
             "eval": ("marta", "nils", "olga", "pavel", "quinn", "rosa")}

Request = tuple[str, str, dict[str, Any] | None]


@dataclass(frozen=True)
class Scenario:
    """One task: what to do, the starting state, and a reference solution."""

    kind: str
    instruction: str
    initial_state: dict[str, Any]
    reference: tuple[Request, ...]
    paraphrase: str = ""
    """The same goal in a held-out phrasing (:data:`PARAPHRASES`)."""

    def expected_outcome(self) -> dict[str, Any]:
        """The judged state after the reference requests (all must succeed)."""
        store = Store(self.initial_state)
        routes = routes_for(store)
        for method, path, body in self.reference:
            status, payload = dispatch(routes, method, path, body)
            if status >= 400:
                raise RuntimeError(f"reference request {method} {path} failed: {payload}")
        return store.outcome()


def _catalog(rng: random.Random,
             customers: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    names = rng.sample(PRODUCTS, 6)
    products = [{"id": 100 + i + rng.randint(0, 9) * 10, "name": name,
                 "price_cents": rng.randint(3, 90) * 50 - rng.choice((0, 1)),
                 "stock": rng.randint(4, 40)} for i, name in enumerate(names)]
    orders = []
    for n, customer in enumerate(rng.sample(customers, 3)):
        product = rng.choice(products)
        orders.append({"id": 500 + n * 7 + rng.randint(0, 5), "customer": customer,
                       "items": [{"product_id": product["id"], "quantity": rng.randint(1, 3)}],
                       "status": "paid", "total_cents": 0})
    return products, orders


def _order(customer: str, items: list[tuple[int, int]]) -> Request:
    return ("POST", "/api/orders", {"customer": customer, "items": [
        {"product_id": p, "quantity": q} for p, q in items]})


Fields = dict[str, Any]

TEMPLATES: dict[str, str] = {
    "order": "Place an order for customer '{customer}': {quantity} x {product}.",
    "partial_stock": "Place an order for customer '{customer}': {wanted} x {product}. If there "
                     "is not enough stock, order all the units that are left instead.",
    "skip_out_of_stock": "Customer '{customer}' wants {q1} x {first} and {q2} x {second} in "
                         "one order. Leave out any item that is out of stock.",
    "cancel": "Customer '{customer}' wants to cancel their order of {product}.",
    "refund_latest": "Refund the most recent order of customer '{customer}' (the one with the "
                     "highest order id).",
    "restock": "Set the stock of {product} to {stock} units and its price to {price}.",
}
"""The instruction of each kind, as the train and eval splits phrase it."""

PARAPHRASES: dict[str, str] = {
    "order": "Create a new purchase for '{customer}' containing the {product}, quantity "
             "{quantity}.",
    "partial_stock": "'{customer}' asks to buy {wanted} units of the {product}; should the "
                     "shop hold fewer than that, buy whatever remains for them.",
    "skip_out_of_stock": "Make a single purchase for '{customer}' with {q1} units of the "
                         "{first} and {q2} units of the {second}, dropping anything the shop "
                         "has none of.",
    "cancel": "Please call off the purchase of the {product} that '{customer}' made.",
    "refund_latest": "Give '{customer}' their money back for their newest purchase (the "
                     "largest order number).",
    "restock": "Update the {product}: {stock} units on hand, selling for {price}.",
}
"""Held-out phrasings of each kind (the ``eval_paraphrase`` split): no train instruction
uses them."""


def _simple_order(rng, products, orders) -> tuple[Fields, list[Request]]:
    product, quantity = rng.choice(products), rng.randint(1, 3)
    customer = rng.choice([o["customer"] for o in orders] + ["walk-in " + orders[0]["customer"]])
    return ({"customer": customer, "quantity": quantity, "product": product["name"]},
            [_order(customer, [(product["id"], quantity)])])


def _partial_stock(rng, products, orders) -> tuple[Fields, list[Request]]:
    product, customer = rng.choice(products), rng.choice(orders)["customer"]
    product["stock"] = rng.randint(1, 4)
    wanted = product["stock"] + rng.randint(2, 6)
    return ({"customer": customer, "wanted": wanted, "product": product["name"]},
            [_order(customer, [(product["id"], product["stock"])])])


def _skip_out_of_stock(rng, products, orders) -> tuple[Fields, list[Request]]:
    first, second = rng.sample(products, 2)
    second["stock"] = 0
    customer, q1, q2 = rng.choice(orders)["customer"], rng.randint(1, 3), rng.randint(1, 3)
    return ({"customer": customer, "q1": q1, "first": first["name"], "q2": q2,
             "second": second["name"]}, [_order(customer, [(first["id"], q1)])])


def _cancel(rng, products, orders) -> tuple[Fields, list[Request]]:
    order = rng.choice(orders)
    name = next(p["name"] for p in products if p["id"] == order["items"][0]["product_id"])
    return ({"customer": order["customer"], "product": name},
            [("POST", f"/api/orders/{order['id']}/cancel", None)])


def _refund_latest(rng, products, orders) -> tuple[Fields, list[Request]]:
    customer = orders[0]["customer"]
    product = rng.choice(products)
    later = {"id": max(o["id"] for o in orders) + rng.randint(1, 9), "customer": customer,
             "items": [{"product_id": product["id"], "quantity": 1}], "status": "paid",
             "total_cents": product["price_cents"]}
    orders.append(later)
    return {"customer": customer}, [("POST", f"/api/orders/{later['id']}/refund", None)]


def _restock(rng, products, orders) -> tuple[Fields, list[Request]]:
    product, stock = rng.choice(products), rng.randint(20, 99)
    cents = rng.randint(5, 60) * 100 + rng.choice((0, 25, 50, 99))
    return ({"product": product["name"], "stock": stock,
             "price": f"${cents // 100}.{cents % 100:02d}"},
            [("PATCH", f"/api/products/{product['id']}", {"stock": stock, "price_cents": cents})])


_KINDS: dict[str, Callable[..., tuple[Fields, list[Request]]]] = {
    "order": _simple_order, "partial_stock": _partial_stock,
    "skip_out_of_stock": _skip_out_of_stock, "cancel": _cancel,
    "refund_latest": _refund_latest, "restock": _restock}


def _set_totals(products: list[dict[str, Any]], orders: list[dict[str, Any]]) -> None:
    for order in orders:
        order["total_cents"] = sum(
            next(p["price_cents"] for p in products if p["id"] == i["product_id"]) * i["quantity"]
            for i in order["items"])


def make_scenario(split: str, index: int) -> Scenario:
    """Draw ``index`` of ``split`` (deterministic)."""
    rng = random.Random(f"http_api:{split}:{index}")
    products, orders = _catalog(rng, CUSTOMERS[split])
    kind = rng.choice(sorted(_KINDS))
    fields, reference = _KINDS[kind](rng, products, orders)
    _set_totals(products, orders)
    state = {"products": products, "orders": orders}
    return Scenario(kind, TEMPLATES[kind].format(**fields), state, tuple(reference),
                    PARAPHRASES[kind].format(**fields))


def split_scenarios(split: str, count: int, train_size: int) -> list[Scenario]:
    """The first ``count`` scenarios of ``split`` with distinct instructions; eval skips any
    instruction that also occurs in the train split (e.g. a restock of the same numbers)."""
    return distinct_draws(make_scenario, lambda scenario: scenario.instruction, split, count,
                          train_size)
