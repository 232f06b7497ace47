"""One JSONL reader for every appended file: a torn last line is dropped, corruption is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentgym.jsonl import append_jsonl, iter_jsonl, read_jsonl, rewrite_jsonl


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": 1}, {"step": 2}])
    with path.open("a") as file:
        file.write('{"step": 3, "rew')  # the process was killed mid-write
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_bad_line_before_the_end_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"results\.jsonl:2 is not valid JSON"):
        read_jsonl(path)


def test_missing_file(tmp_path: Path) -> None:
    assert read_jsonl(tmp_path / "nope.jsonl", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "nope.jsonl")


def test_rewrite_keeps_raw_lines_and_completes_the_last(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"k": 1}\n\n{"k": 2}')  # a blank line and no final newline
    lines = [line for line, _ in iter_jsonl(path)]
    assert lines == ['{"k": 1}\n', '{"k": 2}\n']
    rewrite_jsonl(path, lines[1:])
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"k": 2}]
