"""The online loop's commands (issue #10): `funnelrec learn` (beside `serve`), `funnelrec replay`,
`funnelrec catalogue …`. Registered on the main app by cli.py; each command keeps the CLI rule:
a user-caused error prints one `error: …` line and exits 2."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the online commands to `app` (each command's module is imported only when it runs)."""
    return None
