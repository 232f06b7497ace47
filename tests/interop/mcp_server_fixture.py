"""A tiny MCP server for the MCP-tools tests, run as a subprocess.

    python mcp_server_fixture.py stdio
    python mcp_server_fixture.py http PORT      # streamable HTTP on 127.0.0.1:PORT/mcp

Tools: ``add`` (two integers), ``shout`` (upper-cases text), ``fail`` (raises, so the server
answers with ``isError``), ``nap`` (sleeps: for deadlines) and ``die`` (the process exits
mid-call: a dead server); ``pid`` tells server processes apart.
"""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("agentgym-test-tools")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


@server.tool()
def fail(reason: str) -> str:
    """Always fails with the given reason."""
    raise ToolError(f"refused: {reason}")


@server.tool()
def nap(seconds: float) -> str:
    """Sleep for a while, then answer."""
    time.sleep(seconds)
    return "rested"


@server.tool()
def pid() -> int:
    """The server's process id (tells one server process from another)."""
    return os.getpid()


@server.tool()
def die() -> str:
    """Kill the server process in the middle of the call."""
    os._exit(3)


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
