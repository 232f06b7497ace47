"""Seeded multi-hop questions over the Search-v0 fact base, with verifiable answers.

Ten templates, 1 to 3 hops (a hop = one fact looked up in one passage before the next can be
asked for)::

    1 hop   capital        What is the capital of {country}?
            city_country   In which country is the city of {city}?
            continent      On which continent is {country}?
            currency       What is the currency of {country}?
    2 hops  capital_currency  What is the currency of the country whose capital is {capital}?
            city_continent    On which continent is the country where {city} lies?
            city_capital      What is the capital of the country in which {city} lies?
            bigger_capital    Which is more populous, the capital of {A} or the capital of {B}?
            bigger_country    Which country has more inhabitants, the one where {city A} lies
                              or the one where {city B} lies?
    3 hops  city_vs_capital   Which has more inhabitants, {city} or the capital of the country
                              where {city} lies?

Split rule: every country is in exactly one split, by a hash of its ISO code (about 15% eval);
a city belongs to its country's split, and a question only names entities of its own split, so
no country (nor any of its cities) asked about in eval appears in a train question. Question ``i``
of a split comes from ``random.Random(f"search-v0:{split}:{i}")``; templates whose draw is
unusable (a tie, a missing fact) are skipped and duplicates dropped, deterministically.

Only unambiguous entities are asked about: cities of 100,000+ inhabitants with a name of 4+
characters whose search words (:func:`~agentgym.tasks.search.index.tokenize`, without "city")
occur all together in no other city's or country's name (so neither "Sector 5", which tokenizes
to "sector" like Sectors 1 to 6, nor "Santa Cruz" next to "Santa Cruz de Tenerife", nor "Jersey
City" next to the country Jersey); capitals that name a single country.

Oracle queries (``Question.queries``): ``"<country> country capital"`` for a country passage,
``"<city> city"`` for a city asked about by name, ``"<capital> capital"`` when only the capital is
known, and ``"<capital> capital <country>"`` once the oracle has read the country passage: a
capital's name alone can be shared by other cities (three more Washingtons, and "Washington city"
scores the US capital the same as Fort Washington, Port Washington and Washington Heights).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agentgym.tasks.search.corpus import City, Country, FactBase, fold, load_facts
from agentgym.tasks.search.index import tokenize

__all__ = ["EVAL_PERCENT", "Question", "SplitPool", "make_question", "split_of", "split_questions"]

EVAL_PERCENT = 15
MIN_CITY_POPULATION = 100_000


@dataclass(frozen=True)
class Question:
    """One generated question.

    Attributes:
        text: the question.
        answers: accepted answers (the first is canonical); compared after normalisation.
        kind: the template name.
        hops: facts to chain (1-3).
        gold_ids: ids of the passages that hold the needed facts.
        queries: one search query per passage an oracle would look up.
    """

    text: str
    answers: tuple[str, ...]
    kind: str
    hops: int
    gold_ids: tuple[str, ...]
    queries: tuple[str, ...]


def split_of(country_code: str) -> str:
    """``"eval"`` for about ``EVAL_PERCENT``% of countries (by hash), else ``"train"``."""
    bucket = int(hashlib.sha256(f"search-v0:{country_code}".encode()).hexdigest(), 16) % 100
    return "eval" if bucket < EVAL_PERCENT else "train"


@dataclass(frozen=True)
class SplitPool:
    """The entities one split may ask about, in a stable order."""

    facts: FactBase
    countries: tuple[Country, ...]  # with capital, continent, currency and population
    capital_countries: tuple[Country, ...]  # ... whose capital is a unique, linked city
    cities: tuple[City, ...]  # unambiguous, non-capital cities of the split's countries


def _country_query(country: Country) -> str:
    # "capital" and "country" together keep the country passage above cities that merely lie
    # in it or carry its name ("Country Club is a city in United States").
    return f"{country.name} country capital"


def _city_query(city: City) -> str:
    return f"{city.name} city"


def _capital_query(city: City, country: Country) -> str:
    """The query for a capital whose country the oracle already knows."""
    return f"{city.name} capital {country.name}"


def _unambiguous_names(names: Iterable[str]) -> set[str]:
    """The names whose search words occur all together in no other name of ``names``.

    "city" does not count as a word of a name: every city passage says "... is a city in ...",
    so "Roxas City" is as ambiguous as "Roxas" next to it.
    """
    words = {name: frozenset(tokenize(name)) - {"city"} for name in set(names)}
    holders: dict[str, set[str]] = defaultdict(set)  # word -> names containing it
    for name, name_words in words.items():
        for word in name_words:
            holders[word].add(name)
    return {name for name, name_words in words.items()
            if name_words and set.intersection(*(holders[w] for w in name_words)) == {name}}


@functools.cache
def pool(split: str) -> SplitPool:
    """The entities of ``split`` (see the module docstring for what is kept)."""
    facts = load_facts()
    countries = tuple(c for c in facts.countries.values() if split_of(c.code) == split
                      and c.capital and c.currency and c.population)
    capital_names = Counter(fold(c.capital) for c in facts.countries.values() if c.capital)
    capital_countries = tuple(c for c in countries if capital_names[fold(c.capital)] == 1
                              and facts.capital_city(c.code) is not None)
    names = Counter(c.name for c in facts.cities.values())
    unambiguous = _unambiguous_names([*names, *(c.name for c in facts.countries.values())])
    codes = {c.code for c in countries}
    cities = tuple(c for c in facts.cities.values() if c.country_code in codes
                   and c.population >= MIN_CITY_POPULATION and not c.is_capital
                   and names[c.name] == 1 and c.name in unambiguous and len(c.name) >= 4)
    return SplitPool(facts, countries, capital_countries, cities)


def _country_of(p: SplitPool, city: City) -> Country:
    return p.facts.countries[city.country_code]


def _capital(p: SplitPool, rng: random.Random) -> Question:
    c = rng.choice(p.countries)
    linked = p.facts.capital_city(c.code)
    answers = (c.capital,) + ((linked.name,) if linked and linked.name != c.capital else ())
    return Question(f"What is the capital of {c.name}?", answers, "capital", 1,
                    (f"country:{c.code}",), (_country_query(c),))


def _city_country(p: SplitPool, rng: random.Random) -> Question:
    city = rng.choice(p.cities)
    country = _country_of(p, city)
    return Question(f"In which country is the city of {city.name}?", (country.name,),
                    "city_country", 1, (f"city:{city.id}",), (_city_query(city),))


def _continent(p: SplitPool, rng: random.Random) -> Question:
    c = rng.choice(p.countries)
    return Question(f"On which continent is {c.name}?", (c.continent,), "continent", 1,
                    (f"country:{c.code}",), (_country_query(c),))


def _currency(p: SplitPool, rng: random.Random) -> Question:
    c = rng.choice(p.countries)
    return Question(f"What is the currency of {c.name}?", (c.currency, c.currency_code),
                    "currency", 1, (f"country:{c.code}",), (_country_query(c),))


def _capital_currency(p: SplitPool, rng: random.Random) -> Question:
    c = rng.choice(p.capital_countries)
    capital = p.facts.capital_city(c.code)
    assert capital is not None  # capital_countries only holds linked capitals
    return Question(f"What is the currency of the country whose capital is {c.capital}?",
                    (c.currency, c.currency_code), "capital_currency", 2,
                    (f"city:{capital.id}", f"country:{c.code}"),
                    (f"{c.capital} capital", _country_query(c)))


def _city_continent(p: SplitPool, rng: random.Random) -> Question:
    city = rng.choice(p.cities)
    country = _country_of(p, city)
    return Question(f"On which continent is the country where {city.name} lies?",
                    (country.continent,), "city_continent", 2,
                    (f"city:{city.id}", f"country:{country.code}"),
                    (_city_query(city), _country_query(country)))


def _city_capital(p: SplitPool, rng: random.Random) -> Question:
    city = rng.choice(p.cities)
    country = _country_of(p, city)
    return Question(f"What is the capital of the country in which {city.name} lies?",
                    (country.capital,), "city_capital", 2,
                    (f"city:{city.id}", f"country:{country.code}"),
                    (_city_query(city), _country_query(country)))


def _bigger_capital(p: SplitPool, rng: random.Random) -> Question | None:
    a, b = rng.sample(p.capital_countries, 2)
    ca, cb = p.facts.capital_city(a.code), p.facts.capital_city(b.code)
    assert ca is not None and cb is not None
    if ca.population == cb.population:
        return None
    winner = ca if ca.population > cb.population else cb
    return Question(
        f"Which is more populous, the capital of {a.name} or the capital of {b.name}?",
        (winner.name,), "bigger_capital", 2,
        (f"country:{a.code}", f"city:{ca.id}", f"country:{b.code}", f"city:{cb.id}"),
        (_country_query(a), _capital_query(ca, a), _country_query(b), _capital_query(cb, b)))


def _bigger_country(p: SplitPool, rng: random.Random) -> Question | None:
    x, y = rng.sample(p.cities, 2)
    a, b = _country_of(p, x), _country_of(p, y)
    if a.code == b.code or a.population == b.population:
        return None
    winner = a if a.population > b.population else b
    return Question(
        f"Which country has more inhabitants, the one where {x.name} lies "
        f"or the one where {y.name} lies?", (winner.name,), "bigger_country", 2,
        (f"city:{x.id}", f"country:{a.code}", f"city:{y.id}", f"country:{b.code}"),
        (_city_query(x), _country_query(a), _city_query(y), _country_query(b)))


def _city_vs_capital(p: SplitPool, rng: random.Random) -> Question | None:
    city = rng.choice(p.cities)
    country = _country_of(p, city)
    capital = p.facts.capital_city(country.code)
    if capital is None or capital.population == city.population:
        return None
    winner = city if city.population > capital.population else capital
    return Question(
        f"Which has more inhabitants, {city.name} or the capital of the country where "
        f"{city.name} lies?", (winner.name,), "city_vs_capital", 3,
        (f"city:{city.id}", f"country:{country.code}", f"city:{capital.id}"),
        (_city_query(city), _country_query(country), _capital_query(capital, country)))


TEMPLATES: dict[str, Callable[[SplitPool, random.Random], Question | None]] = {
    "capital": _capital, "city_country": _city_country, "continent": _continent,
    "currency": _currency, "capital_currency": _capital_currency,
    "city_continent": _city_continent, "city_capital": _city_capital,
    "bigger_capital": _bigger_capital, "bigger_country": _bigger_country,
    "city_vs_capital": _city_vs_capital,
}


def make_question(split: str, index: int) -> Question | None:
    """Question ``index`` of ``split``, or None when the draw is unusable (deterministic)."""
    rng = random.Random(f"search-v0:{split}:{index}")
    kind = rng.choice(sorted(TEMPLATES))
    return TEMPLATES[kind](pool(split), rng)


def split_questions(split: str, count: int) -> list[Question]:
    """The first ``count`` distinct usable questions of ``split``.

    Raises:
        ValueError: the split cannot supply ``count`` distinct questions.
    """
    questions: list[Question] = []
    seen: set[str] = set()
    for index in range(count * 50):
        question = make_question(split, index)
        if question is not None and question.text not in seen:
            seen.add(question.text)
            questions.append(question)
            if len(questions) == count:
                return questions
    raise ValueError(f"could only draw {len(questions)} distinct {split} questions of {count}")
