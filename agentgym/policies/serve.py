"""``agentgym serve`` and ``agentgym model prepare`` as plain Python functions (the CLI is thin).

``serve(engine="vllm")`` prepares the model if needed, starts a supervised vLLM server and blocks
until interrupted, then stops the server's whole process group. The embedded engine (``hf``)
needs no server: it lives in the trainer's process (:func:`make_policy` builds either).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from agentgym.errors import PolicyError
from agentgym.policies.hf_engine import HFEngine
from agentgym.policies.model_prep import prepare_model, resolve_model

__all__ = ["ENGINES", "main", "make_policy", "prepare", "serve"]

logger = logging.getLogger(__name__)

ENGINES = ("hf", "vllm")


def prepare(source: str | None = None, out: str | None = None, force: bool = False) -> Path:
    """``agentgym model prepare``: GGUF/HF folder -> cached safetensors + tool-aware template."""
    return prepare_model(source, out, force)


async def _serve_vllm(model: Path, host: str, port: int, served_model_name: str,
                      extra_args: tuple[str, ...]) -> None:
    from agentgym.policies.vllm_server import VLLMServer, VLLMServerConfig

    config = VLLMServerConfig(model=model, host=host, port=port,
                              served_model_name=served_model_name, extra_args=extra_args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with VLLMServer(config) as server:
        logger.info("serving %s as %r at %s (Ctrl-C to stop)", model, served_model_name,
                    server.base_url)
        await stop.wait()


def serve(engine: str = "vllm", model: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, served_model_name: str = "policy",
          extra_args: tuple[str, ...] = ()) -> None:
    """``agentgym serve --engine vllm --model PATH``: run a supervised vLLM server until Ctrl-C.

    Args:
        engine: ``"vllm"`` (``"hf"`` is in-process: see :func:`make_policy`).
        model: a local HF folder; None prepares and serves the default SmolLM2.
        host: interface to bind (loopback by default).
        port: TCP port.
        served_model_name: the base model's name in the API.
        extra_args: more vLLM flags.

    Raises:
        PolicyError: unknown engine, missing model or vLLM, or a server that will not start.
    """
    if engine not in ENGINES:
        raise PolicyError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "hf":
        raise PolicyError("the embedded engine runs inside the trainer or eval process "
                          "(--engine hf there); it has no server to start")

    asyncio.run(_serve_vllm(resolve_model(model), host, port, served_model_name,
                            tuple(extra_args)))


def make_policy(engine: str = "hf", model: str | None = None, *, base_url: str | None = None,
                api_key: str | None = None, **kwargs: Any) -> Any:
    """Build a Policy: the embedded engine (``hf``) or a client of a running server (``vllm``).

    ``--engine vllm`` with ``base_url`` talks to that server (``model`` is the served name);
    without one, start a server first with :func:`serve` or :class:`VLLMServer`.
    """
    if engine == "hf":
        return HFEngine.from_pretrained(model, **kwargs)
    if engine == "vllm":
        if base_url is None:
            raise PolicyError("--engine vllm needs the server's base_url (agentgym serve)")
        from agentgym.policies.openai_client import OpenAIPolicy

        return OpenAIPolicy(base_url, model or "policy", api_key=api_key, **kwargs)
    raise PolicyError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def main(argv: list[str] | None = None) -> int:
    """``python -m agentgym.policies.serve [--model PATH] [--port N]`` (until the CLI mounts it)."""
    import argparse

    parser = argparse.ArgumentParser(prog="agentgym serve", description=serve.__doc__.split(
        "\n")[0])
    parser.add_argument("--engine", default="vllm", choices=ENGINES)
    parser.add_argument("--model", default=None, help="local HF folder (default: SmolLM2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default="policy")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per health probe
    serve(args.engine, args.model, args.host, args.port, args.served_model_name, tuple(extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
