"""A BM25 index over a passage corpus (bm25s), cached on disk and shared within a process.

bm25s precomputes every (term, document) BM25 score into a sparse matrix at build time, so a
query is a sum of a few posting lists plus a top-k selection: about a millisecond at 200,000
passages. The index is built on first use and saved under
``$AGENTGYM_CACHE/search/<corpus hash>/`` (default ``~/.cache/agentgym``); the key covers the
passages, the tokenizer and the BM25 parameters, so a changed corpus never reads a stale index.
Writes go to a temporary folder renamed into place, so concurrent builders cannot corrupt it.

Tokenization is ours, not bm25s's, so that queries and passages are split the same way without
bm25s's vocabulary bookkeeping on the hot path: accents folded, lower-cased, words of two or more
letters or digits, a short English stop-word list removed. ``bm25s`` and ``numpy`` are imported
inside functions: importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentgym.tasks.search.corpus import Passage, corpus_hash

__all__ = ["BM25Index", "Hit", "cache_root", "format_hits", "get_index", "tokenize"]

logger = logging.getLogger(__name__)

TOKENIZER_VERSION = "1"
"""Bump when :func:`tokenize` changes: it is part of the cache key."""
_WORD = re.compile(r"\w\w+")
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "he",
    "her", "his", "how", "in", "into", "is", "it", "its", "of", "on", "or", "she", "such",
    "that", "the", "their", "them", "then", "there", "these", "they", "this", "to", "was",
    "were", "what", "when", "where", "which", "who", "whose", "will", "with"})


def tokenize(text: str) -> list[str]:
    """Accent-folded, lower-cased words of 2+ characters, minus stop words."""
    decomposed = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    return [w for w in _WORD.findall(folded) if w not in STOPWORDS]


def cache_root() -> Path:
    """agentgym's cache root: ``$AGENTGYM_CACHE`` or ``~/.cache/agentgym``."""
    root = os.environ.get("AGENTGYM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "agentgym"


@dataclass(frozen=True)
class Hit:
    """One search result: the passage and its BM25 score."""

    passage: Passage
    score: float


class BM25Index:
    """Top-k BM25 (Lucene variant, k1=1.5, b=0.75) over a fixed list of passages.

    Build with :meth:`build` or :meth:`load_or_build`; search with :meth:`search`. Thread-safe
    for searching (read-only numpy arrays).

    Args:
        passages: the corpus, in index order.
        retriever: a fitted ``bm25s.BM25`` over ``passages``.
    """

    K1, B = 1.5, 0.75

    def __init__(self, passages: Sequence[Passage], retriever: Any):
        num_docs = int(retriever.scores["num_docs"])
        if num_docs != len(passages):
            raise ValueError(f"index has {num_docs} documents but the corpus {len(passages)}")
        self.passages = tuple(passages)
        self._retriever = retriever

    @staticmethod
    def cache_key(passages: Sequence[Passage]) -> str:
        """Corpus hash + tokenizer version + BM25 parameters, shortened for a folder name."""
        spec = f"{corpus_hash(passages)}:{TOKENIZER_VERSION}:{BM25Index.K1}:{BM25Index.B}"
        return hashlib.sha256(spec.encode()).hexdigest()[:20]

    @classmethod
    def build(cls, passages: Sequence[Passage]) -> BM25Index:
        """Tokenize and index ``passages`` (title and text) in memory."""
        import bm25s

        if not passages:
            raise ValueError("cannot index an empty corpus")
        retriever = bm25s.BM25(k1=cls.K1, b=cls.B, method="lucene")
        retriever.index([tokenize(f"{p.title} {p.text}") for p in passages], show_progress=False)
        return cls(passages, retriever)

    @classmethod
    def load_or_build(cls, passages: Sequence[Passage], cache_dir: Path | None = None,
                      ) -> BM25Index:
        """Load the cached index of ``passages``, or build and cache it.

        Args:
            passages: the corpus.
            cache_dir: where indexes live (default ``cache_root() / "search"``).
        """
        import bm25s

        folder = (cache_dir or cache_root() / "search") / cls.cache_key(passages)
        if (folder / "params.index.json").exists():
            try:
                retriever = bm25s.BM25.load(str(folder), show_progress=False)
                return cls(passages, retriever)
            except (OSError, ValueError) as exc:  # a damaged cache is rebuilt, not fatal
                logger.warning("rebuilding damaged search index %s: %s", folder, exc)
        logger.info("building BM25 index of %d passages in %s", len(passages), folder)
        index = cls.build(passages)
        index._save(folder)
        return index

    def _save(self, folder: Path) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        try:
            self._retriever.save(str(tmp), show_progress=False)
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        except OSError as exc:  # another process won the race, or the disk is read-only
            logger.warning("could not cache search index in %s: %s", folder, exc)
            shutil.rmtree(tmp, ignore_errors=True)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` best passages for ``query``, best first; passages scoring 0 are left out.

        Equal scores are ordered by corpus position, also at the k-th place: which of several
        passages tied there get in does not depend on numpy's partition algorithm (which picks
        arbitrarily among ties; the choice may differ between numpy builds and CPUs).
        """
        import numpy as np

        ids = self._retriever.get_tokens_ids(tokenize(query))
        if not ids or k < 1:
            return []
        scores = self._retriever.get_scores_from_ids(ids)  # [num_docs]
        k = min(k, len(scores))
        kth = -np.partition(-scores, k - 1)[k - 1]  # the k-th best score
        top = np.flatnonzero((scores >= kth) & (scores > 0))  # [>= k], ties at the k-th too
        top = top[np.lexsort((top, -scores[top]))][:k]  # by score desc, then corpus order
        return [Hit(self.passages[i], float(scores[i])) for i in top]


_LOADED: dict[str, BM25Index] = {}
_BY_OBJECT: dict[int, tuple[Sequence[Passage], BM25Index]] = {}  # id -> (corpus kept alive, index)
_LOCK = threading.Lock()


def get_index(passages: Sequence[Passage], cache_dir: Path | None = None) -> BM25Index:
    """The process-wide index of ``passages`` (loaded or built once, then shared).

    The same corpus object skips even the content hash (~0.2 s at 34k passages), so creating
    many envs over one corpus stays cheap.
    """
    with _LOCK:
        known = _BY_OBJECT.get(id(passages))
        if known is not None and known[0] is passages:
            return known[1]
        key = BM25Index.cache_key(passages)
        if key not in _LOADED:
            _LOADED[key] = BM25Index.load_or_build(passages, cache_dir)
        _BY_OBJECT[id(passages)] = (passages, _LOADED[key])
        return _LOADED[key]

def format_hits(hits: Sequence[Hit], max_chars: int = 600) -> str:
    """Compact tool output: one ``(rank) [id] title: text`` line per hit."""
    if not hits:
        return "No passages matched the query."
    lines = []
    for rank, hit in enumerate(hits, 1):
        text = " ".join(hit.passage.text.split())
        if len(text) > max_chars:
            text = text[:max_chars].rstrip() + " ..."
        title = f"{hit.passage.title}: " if hit.passage.title else ""
        lines.append(f"({rank}) [{hit.passage.id}] {title}{text}")
    return "\n".join(lines)
