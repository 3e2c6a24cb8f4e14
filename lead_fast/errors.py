"""Every error lead_fast reports to a user, under one base that carries its exit code.

An entry point catches ``LeadFastError`` once and prints its message as one paragraph: the message names the
bad input and says what to do. Anything else that escapes is a bug and keeps its traceback. This module
imports nothing from lead_fast, so every module may raise these.
"""

from __future__ import annotations

import errno


class LeadFastError(Exception):
    """An error with a message meant for the user; ``exit_code`` is what the command exits with."""

    exit_code = 2


class ConfigError(LeadFastError, ValueError):
    """A bad configuration value or key; the message says which and why."""


class DataError(LeadFastError, ValueError):
    """Bad training data; the message names the file and, where it can, the row."""


class ModelError(LeadFastError, ValueError):
    """A model directory that cannot be used; the message says what is missing."""


class PretrainedError(LeadFastError, RuntimeError):
    """A model lead_fast builds from the package index could not be built; the message says why and what to do."""


class OutputDirError(LeadFastError, ValueError):
    """The output directory cannot be used; the message says why and what to do."""


class CheckpointError(LeadFastError, RuntimeError):
    """A checkpoint could not be written or no intact one could be read; the message says why."""


class ExportError(LeadFastError, ValueError):
    """The export cannot be made; the message says why."""


class EvalError(LeadFastError, ValueError):
    """Bad input to the evaluation command; the message names it."""


class ReplayError(LeadFastError, ValueError):
    """A run directory, step or option that ``lead_fast.replay`` cannot replay; the message says why."""


class GradingStartError(LeadFastError, RuntimeError):
    """Grading workers cannot start; the message holds the worker's own error."""


class EngineMemoryError(ConfigError):
    """The rollout engine's memory setting leaves no room for its KV cache (one paragraph, with a setting
    that fits)."""


class NonFiniteError(LeadFastError, RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient: training stopped, not bad input."""

    exit_code = 1


class NoSignalError(LeadFastError, RuntimeError):
    """Every group of ``run.max_no_signal_steps`` steps in a row was dropped: nothing trained, nothing would."""

    exit_code = 1


class RolloutError(LeadFastError, RuntimeError):
    """Generating or grading failed during training (the engine's process died, say): the last completed step
    was saved first, and the message says where and how to continue."""

    exit_code = 1


class RewardFunctionError(RolloutError):
    """A reward function raised, hung, or returned something other than one number (or None) per completion:
    the message names it, the step and the first bad row."""


def describe_os_error(e: OSError) -> str:
    """A short human cause for an OSError from writing files."""
    if e.errno == errno.ENOSPC:
        return "the disk is full (no space left on device)"
    if e.errno == errno.EDQUOT:
        return "the disk quota is exceeded"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"it is not writable ({e.strerror})"
    if e.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a directory"
    return e.strerror or str(e)
