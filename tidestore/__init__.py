"""Tidestore's composition root: configuration, node wiring and the CLI."""

__version__ = "0.1.0"
