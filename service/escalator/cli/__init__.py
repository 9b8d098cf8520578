"""The escalator command: one module per command group, shared helpers in cli/_common.py."""

from escalator.cli.main import main

__all__ = ["main"]
