"""Sandbox pieces that need no Docker: import hygiene, config, protocol framing, grading logic."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys

import pytest

from agentgym.sandbox import ExecResult, SandboxConfig
from agentgym.sandbox.base import expected_tests, grade_from_report
from agentgym.sandbox.protocol import ChannelBroken, RunnerChannel, encode_frame


def test_importing_sandbox_and_its_cli_does_not_import_docker() -> None:
    code = (
        "import sys, agentgym, agentgym.sandbox, agentgym.sandbox.cli; "
        "print('docker' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_app_has_build_and_doctor() -> None:
    from typer.testing import CliRunner

    from agentgym.sandbox.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "build" in result.output and "doctor" in result.output


def test_config_clamps_timeouts_and_rejects_bad_limits() -> None:
    cfg = SandboxConfig(default_timeout_s=5, max_timeout_s=30)
    assert cfg.clamp_timeout(None) == 5
    assert cfg.clamp_timeout(1e9) == 30  # a model cannot ask for more time than the config
    with pytest.raises(ValueError):
        cfg.clamp_timeout(0)
    with pytest.raises(ValueError):
        SandboxConfig(memory_mb=0)
    with pytest.raises(ValueError):
        SandboxConfig(default_timeout_s=100, max_timeout_s=10)
    with pytest.raises(AttributeError):
        cfg.memory_mb = 10**6  # type: ignore[misc]  # frozen


def test_exec_result_is_frozen_and_ok() -> None:
    r = ExecResult.from_wire({"stdout": "x", "stderr": "", "exit_code": 0, "extra": 1})
    assert r.ok and r.stdout == "x"
    with pytest.raises(AttributeError):
        r.exit_code = 1  # type: ignore[misc]
    assert not ExecResult("", "", 0, timed_out=True).ok


def test_expected_tests_come_from_the_host_parse() -> None:
    code = "def test_a(): pass\nasync def test_b(): pass\ndef helper(): pass\nx = 1\n"
    assert expected_tests(code) == ["test_a", "test_b"]
    with pytest.raises(ValueError):
        expected_tests("def (")


def test_unreported_tests_fail() -> None:
    code = "def test_a(): pass\ndef test_b(): pass\n"
    res = ExecResult("passed 2/2\n", "", 0)
    report = {"setup_error": None, "tests": [{"name": "test_a", "passed": True}]}
    g = grade_from_report(code, res, report)
    assert (g.passed, g.total, g.all_passed) == (1, 2, False)
    assert g.tests[1].error == "not reported"
    g = grade_from_report(code, res, None)  # no report at all: nothing passes
    assert g.passed == 0 and g.setup_error


def _docker_frames(payload: bytes, chunk: int) -> bytes:
    out = b""
    for i in range(0, len(payload), chunk):
        part = payload[i : i + chunk]
        out += struct.pack(">BxxxI", 1, len(part)) + part
        out += struct.pack(">BxxxI", 2, 5) + b"noise"  # runner stderr interleaved
    return out


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, b: bytes) -> None:
        self.data += b

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_channel_demultiplexes_split_frames() -> None:
    reader = asyncio.StreamReader()
    sink = _Sink()
    chan = RunnerChannel(reader, sink, "t")  # type: ignore[arg-type]
    body = json.dumps({"id": 1, "ok": True, "stdout": "é" * 100}).encode()
    reader.feed_data(_docker_frames(struct.pack(">I", len(body)) + body, 7))
    answer = await chan.call({"op": "ping"})
    assert answer["stdout"] == "é" * 100
    assert sink.data == encode_frame({"op": "ping", "id": 1})


async def test_channel_breaks_on_wrong_id_and_eof() -> None:
    reader = asyncio.StreamReader()
    chan = RunnerChannel(reader, _Sink(), "t")  # type: ignore[arg-type]
    body = json.dumps({"id": 99, "ok": True}).encode()
    reader.feed_data(_docker_frames(struct.pack(">I", len(body)) + body, 64))
    with pytest.raises(ChannelBroken):
        await chan.call({"op": "ping"})
    assert chan.broken
    reader2 = asyncio.StreamReader()
    chan2 = RunnerChannel(reader2, _Sink(), "t")  # type: ignore[arg-type]
    reader2.feed_eof()
    with pytest.raises(ChannelBroken):
        await chan2.call({"op": "ping"})


def test_grader_codec_rebuilds_exact_builtin_values() -> None:
    """Values cross the isolated grader's pipe as tagged JSON; subclasses arrive as their base
    value (an overridden ``__eq__``/``__repr__``/``__iter__`` is never called), other types
    are refused, and malformed data from the solution's process raises."""
    from agentgym.sandbox.grader import decode, encode

    value = [1, -2**70, 1.5, float("inf"), -0.0, 1 + 2j, "é\udc80", b"\x00", bytearray(b"x"),
             (1, (2,)), {3}, frozenset({4}), {"k": [None, True]}, {(1, 2): "t"}]
    back = decode(json.loads(json.dumps(encode(value))))
    assert back == value and [type(v) for v in back] == [type(v) for v in value]

    class Sneaky(int):
        def __eq__(self, other):
            return True

        def __repr__(self):
            return "999"

    class Tricky(list):
        def __iter__(self):
            return iter([42])

    assert encode(Sneaky(7)) == ["int", "7"] and type(decode(encode(Sneaky(7)))) is int
    assert decode(encode(Tricky([1, 2]))) == [1, 2]
    with pytest.raises(TypeError, match="built-in values only"):
        encode(object())
    for bad in (["int", "1e5x"], ["bool", 1], ["list", "ab"], ["nope"], [], "int", ["dict", [[]]]):
        with pytest.raises((ValueError, TypeError)):
            decode(bad)
