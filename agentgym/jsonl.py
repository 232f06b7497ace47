"""JSON Lines files: one reader that survives a crash mid-write, one appender.

Every file agentgym appends to as it goes (``results.jsonl``, ``trajectories.jsonl``,
``metrics.jsonl``, ``samples.jsonl``) can end in a half-written line when the process is killed.
That torn *last* line is dropped with a warning, so a resumed run or a report still reads the
file; a bad line anywhere else is corruption and raises ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["append_jsonl", "iter_jsonl", "read_jsonl", "rewrite_jsonl"]

logger = logging.getLogger(__name__)


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(raw line with its newline, decoded value) for each complete line of ``path``.

    Blank lines are skipped. A last line that does not decode (or has no newline and does not
    decode) is a torn write and is dropped with a warning.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line other than the last is not JSON.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                logger.warning("%s: dropping a torn last line %d (a write was cut off)",
                               path, number)
                return
            raise ValueError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
        yield (line if line.endswith("\n") else line + "\n"), value


def read_jsonl(path: str | Path, *, missing_ok: bool = False) -> list[Any]:
    """Every decoded line of ``path`` (see :func:`iter_jsonl`); ``[]`` for a missing file
    when ``missing_ok``."""
    if missing_ok and not Path(path).exists():
        return []
    return [value for _, value in iter_jsonl(path)]


def append_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows as one line each and flush (one ``write`` per call)."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    with Path(path).open("a", encoding="utf-8") as file:
        file.write(text)
        file.flush()


def rewrite_jsonl(path: str | Path, lines: Iterable[str]) -> None:
    """Replace ``path`` atomically with raw ``lines`` (each ending in a newline)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)
