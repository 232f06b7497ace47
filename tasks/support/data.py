"""The offline data of agentgym/Support-v0: order records, an internal code glossary and the
customers' questions, all generated from fixed lists and seeds (no download).

A case is one customer message about one order. The order record is what the ``lookup_order``
tool returns: internal field names and status codes, the way a back office stores it. The
glossary (``lookup_code``) says what each code means for the customer. A good reply reads both
and explains the outcome in plain words: what happened, the date or amount the customer asked
about, and what happens next.

Case ``i`` of a split is drawn with ``random.Random("support-v0:<split>:<i>")``; duplicates of a
question (and, for eval, every question of the train split) are skipped
(:func:`~agentgym.tasks.splits.distinct_draws`).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentgym.tasks.splits import distinct_draws

__all__ = ["CODES", "Case", "make_case", "split_cases"]

TODAY = dt.date(2026, 6, 10)
"""The date of every conversation (fixed, so records and references never depend on the clock)."""

CODES: dict[str, str] = {
    "EXC_WEATHER_HOLD": "The carrier is holding the parcel at a hub because of severe weather. "
                        "It moves again when the hold lifts; the new estimated delivery date "
                        "is in eta_revised. No action needed from the customer.",
    "EXC_ADDR_UNVERIFIED": "The carrier could not match the shipping address. The parcel waits "
                           "at the local depot for 5 business days; the customer must confirm "
                           "the address (Account > Orders > Fix address) or it is returned.",
    "EXC_CARRIER_BACKLOG": "The carrier has a backlog at the sorting centre. The parcel is "
                           "safe; the new estimated delivery date is in eta_revised.",
    "DLV_FRONT_DOOR": "Delivered and left at the front door or porch.",
    "DLV_MAILROOM": "Delivered to the building's mailroom or reception desk.",
    "DLV_NEIGHBOR": "Handed to a neighbour; the neighbour's door number is in dlv_note.",
    "RFD_RESTOCK_15": "Refund of an opened item: 15% restocking fee kept, the rest refunded "
                      "to the original payment method within 5 business days.",
    "RFD_RET_SHIP": "Refund minus the return shipping label cost (ret_label_cost), to the "
                    "original payment method within 5 business days.",
    "CXL_PMT_AVS": "Cancelled because the card's billing address did not match the bank's "
                   "record. No money was taken; the customer can order again with the "
                   "correct billing address.",
    "CXL_PMT_EXPIRED": "Cancelled because the card had expired. No money was taken; the "
                       "customer can order again with a valid card.",
    "BO_RESTOCK": "Back-ordered: the item ships when stock arrives (restock_eta). The "
                  "customer may cancel for a full refund before it ships.",
    "AUTH_HOLD_5BD": "A second charge is a temporary card authorisation, not a payment; the "
                     "bank releases it within 5 business days. Only one payment was taken.",
}
"""Internal status codes and what they mean (what ``lookup_code`` returns)."""

FIRST_NAMES = ("Ana", "Ben", "Chloe", "Dmitri", "Esther", "Farid", "Grace", "Hiro", "Ines",
               "Jonas", "Kemi", "Liam", "Mei", "Nadia", "Omar", "Priya", "Quentin", "Rosa",
               "Sven", "Tariq", "Uma", "Victor", "Wen", "Ximena", "Yusuf", "Zoe")
PRODUCTS = (("stainless steel kettle", 39.90), ("wool throw blanket", 64.00),
            ("noise-cancelling headphones", 189.00), ("cast iron skillet", 45.50),
            ("desk lamp", 29.99), ("running shoes", 112.00), ("espresso grinder", 149.00),
            ("yoga mat", 34.00), ("rain jacket", 98.00), ("bluetooth speaker", 79.95),
            ("ceramic dinner set", 120.00), ("electric toothbrush", 59.00),
            ("hiking backpack", 135.00), ("air purifier", 219.00), ("board game", 42.00))
CARRIERS = ("ParcelWay", "SwiftShip", "NorthPost")


@dataclass(frozen=True)
class Case:
    """One support conversation.

    Attributes:
        question: the customer's message (names the order id).
        order: the record ``lookup_order`` returns for the order id.
        reference: a model reply (the judge's reference answer).
        facts: strings a correct reply states (logged: share found in the reply).
        kind: the scenario (delayed, delivered, refund, cancelled, backorder, double_charge).
    """

    question: str
    order: dict[str, Any]
    reference: str
    facts: tuple[str, ...]
    kind: str
    codes: tuple[str, ...] = field(default=())


def _day(offset: int) -> dt.date:
    return TODAY + dt.timedelta(days=offset)


def _say(date: dt.date) -> str:
    return f"{date:%B} {date.day}"


def _money(value: float) -> str:
    return f"${value:,.2f}"


def _delayed(rng: random.Random, base: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    code = rng.choice(["EXC_WEATHER_HOLD", "EXC_CARRIER_BACKLOG", "EXC_ADDR_UNVERIFIED"])
    eta, revised = _day(-rng.randint(1, 3)), _day(rng.randint(2, 6))
    base.update(status="IN_TRANSIT_EXC", exc_code=code, eta_orig=eta.isoformat(),
                carrier=rng.choice(CARRIERS))
    if code == "EXC_ADDR_UNVERIFIED":
        base["hold_until"] = _day(5).isoformat()
        question = f"Where is my order {base['order_id']}? It was supposed to arrive {_say(eta)}."
        reference = (f"Your order {base['order_id']} is waiting at the local depot because the "
                     "carrier could not verify your shipping address. Please confirm your "
                     "address under Account > Orders > Fix address before "
                     f"{_say(_day(5))}, or the parcel will be sent back to us.")
        return question, reference, ("address", _say(_day(5)))
    base["eta_revised"] = revised.isoformat()
    why = "severe weather at a carrier hub" if code == "EXC_WEATHER_HOLD" else \
        "a backlog at the carrier's sorting centre"
    question = f"Where is my order {base['order_id']}? It was supposed to arrive {_say(eta)}."
    reference = (f"Your order {base['order_id']} is delayed by {why}. It is safe and now "
                 f"expected on {_say(revised)}; you don't need to do anything.")
    return question, reference, (_say(revised),)


def _delivered(rng: random.Random, base: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    code = rng.choice(["DLV_FRONT_DOOR", "DLV_MAILROOM", "DLV_NEIGHBOR"])
    when = _day(-rng.randint(1, 4))
    base.update(status="DELIVERED", dlv_code=code, dlv_ts=f"{when.isoformat()}T1{rng.randint(0, 8)}"
                f":{rng.randint(10, 59)}:00", carrier=rng.choice(CARRIERS))
    where = {"DLV_FRONT_DOOR": "left at your front door", "DLV_MAILROOM":
             "left at your building's mailroom or reception"}.get(code, "")
    facts: tuple[str, ...] = (_say(when),)
    if code == "DLV_NEIGHBOR":
        door = str(rng.randint(2, 40))
        base["dlv_note"] = f"neighbour door {door}"
        where, facts = f"handed to your neighbour at door {door}", (_say(when), door)
    question = (f"Tracking says my order {base['order_id']} was delivered but I don't have it. "
                "What happened?")
    reference = (f"Order {base['order_id']} was delivered on {_say(when)} and {where}. Please "
                 "check there; if you still can't find it, reply and we'll open a carrier "
                 "investigation.")
    return question, reference, facts


def _refund(rng: random.Random, base: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    paid = base["amount_paid"]
    code = rng.choice(["RFD_RESTOCK_15", "RFD_RET_SHIP"])
    if code == "RFD_RESTOCK_15":
        kept = round(paid * 0.15, 2)
        why = f"a 15% restocking fee ({_money(kept)}) applies to opened items"
    else:
        kept = rng.choice([5.99, 7.49, 8.99])
        base["ret_label_cost"] = kept
        why = f"the return shipping label ({_money(kept)}) was deducted"
    refunded = round(paid - kept, 2)
    base.update(status="REFUNDED", rfd_code=code, rfd_amount=refunded,
                rfd_ts=_day(-1).isoformat())
    question = (f"I returned order {base['order_id']} and only got {_money(refunded)} back, "
                f"but I paid {_money(paid)}. Why?")
    reference = (f"You paid {_money(paid)} for order {base['order_id']} and were refunded "
                 f"{_money(refunded)} because {why}. The refund reaches your original payment "
                 "method within 5 business days.")
    return question, reference, (_money(refunded), _money(kept))


def _cancelled(rng: random.Random, base: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    code = rng.choice(["CXL_PMT_AVS", "CXL_PMT_EXPIRED"])
    base.update(status="CANCELLED", cxl_code=code, amount_captured=0.0)
    why = "the card's billing address did not match your bank's record" \
        if code == "CXL_PMT_AVS" else "the card on the order had expired"
    question = f"Why was my order {base['order_id']} cancelled? I really need it."
    reference = (f"Order {base['order_id']} was cancelled because {why}. No money was taken. "
                 "You can place the order again with " + (
                     "the correct billing address." if code == "CXL_PMT_AVS"
                     else "a valid card."))
    return question, reference, ("no money",)


def _backorder(rng: random.Random, base: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    restock = _day(rng.randint(7, 30))
    base.update(status="BACKORDERED", bo_code="BO_RESTOCK", restock_eta=restock.isoformat())
    question = f"When will my order {base['order_id']} ship? It's been a while."
    reference = (f"The {base['item']} in order {base['order_id']} is out of stock; it ships "
                 f"when new stock arrives, expected {_say(restock)}. If you'd rather not wait, "
                 "you can cancel for a full refund before it ships.")
    return question, reference, (_say(restock), "cancel")


def _double_charge(rng: random.Random, base: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
    base.update(status="PAID", pmt_events=[
        {"type": "CAPTURE", "amount": base["amount_paid"], "ts": _day(-1).isoformat()},
        {"type": "AUTH", "amount": base["amount_paid"], "ts": _day(-1).isoformat(),
         "auth_code": "AUTH_HOLD_5BD"}])
    question = (f"I was charged twice for order {base['order_id']}! I see two charges of "
                f"{_money(base['amount_paid'])}.")
    reference = (f"Only one payment of {_money(base['amount_paid'])} was taken for order "
                 f"{base['order_id']}. The second line is a temporary card authorisation, not "
                 "a charge; your bank releases it within 5 business days.")
    return question, reference, ("5 business days",)


SCENARIOS: dict[str, Callable[[random.Random, dict[str, Any]], tuple[str, str, tuple[str, ...]]]]
SCENARIOS = {"delayed": _delayed, "delivered": _delivered, "refund": _refund,
             "cancelled": _cancelled, "backorder": _backorder, "double_charge": _double_charge}
"""Scenario name -> the function that fills the record and writes question and reference."""


def make_case(split: str, index: int) -> Case:
    """Case ``index`` of ``split`` (deterministic)."""
    rng = random.Random(f"support-v0:{split}:{index}")
    kind = rng.choice(sorted(SCENARIOS))
    item, price = rng.choice(PRODUCTS)
    order_id = f"{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{rng.randint(10000, 99999)}"
    base: dict[str, Any] = {"order_id": order_id, "customer": rng.choice(FIRST_NAMES),
                            "item": item, "amount_paid": price,
                            "placed": _day(-rng.randint(6, 20)).isoformat()}
    question, reference, facts = SCENARIOS[kind](rng, base)
    codes = tuple(str(v) for v in _values(base) if str(v) in CODES)
    greeting = rng.choice(["Hi,", "Hello,", "Hey there,", "Good morning,"])
    return Case(question=f"{greeting} {question} - {base['customer']}", order=base,
                reference=reference, facts=facts, kind=kind, codes=codes)


def _values(record: Any) -> list[Any]:
    if isinstance(record, dict):
        return [v for value in record.values() for v in _values(value)]
    if isinstance(record, list):
        return [v for value in record for v in _values(value)]
    return [record]


def split_cases(split: str, count: int, train_size: int) -> list[Case]:
    """The first ``count`` distinct cases of ``split``; eval shares no question (or order id)
    with the first ``train_size`` train cases."""
    return distinct_draws(make_case, lambda case: case.order["order_id"], split, count,
                          train_size)
