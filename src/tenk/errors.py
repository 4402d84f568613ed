"""Errors a user can cause. Each carries a sentence the user understands; the CLI prints
that sentence and exits non-zero instead of showing a traceback."""


class TenkError(Exception):
    """Base of every user-facing error."""


class CheckpointError(TenkError):
    """A model directory is missing, incomplete or does not match its config."""


class ConfigError(TenkError):
    """A config value (config.json, CLI flag, constructor argument) is invalid."""
