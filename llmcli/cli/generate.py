"""``llmcli generate`` (placeholder while being written)."""

import typer


def register(app: typer.Typer) -> None:
    pass
