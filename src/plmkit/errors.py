"""Errors plmkit raises on bad input. Each message is one line naming the problem and where it is."""

from __future__ import annotations


class PlmkitError(Exception):
    """Base class: the CLI prints `error: <message>` and exits with status 2."""


class ConfigError(PlmkitError, ValueError):
    """An unknown config key, a wrong type, or an impossible combination of options."""


class CheckpointError(PlmkitError):
    """A missing, corrupt, truncated or mismatched checkpoint."""


class DataError(PlmkitError, ValueError):
    """A malformed, empty or unreadable data file, or a record that breaks its task's rules."""


class TokenizerError(PlmkitError):
    """A tokenizer that cannot be read or does not match the model."""


class TrainingError(PlmkitError):
    """A training run that cannot continue, such as a loss that became NaN or infinite."""
