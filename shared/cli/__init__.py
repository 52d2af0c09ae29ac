"""The `turnstream` command and its interactive tools (chat, tail): tools around the service, not its contract."""

from shared.cli.main import main

__all__ = ["main"]
