"""``agentgym sandbox build|doctor``: a thin typer sub-app over ``build_image`` and ``doctor``.

Mounted by the main CLI as ``agentgym sandbox``; also runnable alone with
``python -m agentgym.sandbox.cli``. Importable without the Docker SDK.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from agentgym.errors import SandboxUnavailableError

from .doctor import doctor as run_doctor
from .image import build_image

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Docker sandboxes for untrusted code: build the image, check the setup.")


@app.command()
def build(
    force: Annotated[bool, typer.Option(help="rebuild even if the image exists")] = False,
    method: Annotated[str, typer.Option(help="auto | dockerfile | debootstrap")] = "auto",
    mirror: Annotated[str | None, typer.Option(help="Debian mirror for debootstrap")] = None,
) -> None:
    """Build the sandbox image (skipped when it exists)."""

    if method not in ("auto", "dockerfile", "debootstrap"):
        raise typer.BadParameter("method must be auto, dockerfile or debootstrap")
    logging.getLogger("agentgym").setLevel(logging.INFO)
    try:
        tag = build_image(force=force, method=method, mirror=mirror)  # type: ignore[arg-type]
    except SandboxUnavailableError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(tag)


@app.command()
def doctor(
    smoke_test: Annotated[bool, typer.Option(help="also start a sandbox and run code")] = True,
) -> None:
    """Report what the sandbox needs that is missing, and how to fix it."""
    checks = run_doctor(smoke_test=smoke_test)
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        typer.echo(f"{mark} {c.name}: {c.detail}")
        if c.fix:
            typer.echo(f"     fix: {c.fix}")
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
