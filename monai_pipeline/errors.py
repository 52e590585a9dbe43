"""Error types. Every user-facing error names the offending file and the problem on one line."""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """Base class for errors the CLI reports as one line with exit code 2."""


class InputError(PipelineError, ValueError):
    """Bad input: ``InputError(path, "what is wrong")`` renders as ``"<path>: what is wrong"``."""

    def __init__(self, path: str | Path | None, problem: str, hint: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.hint = hint
        msg = problem if self.path is None else f"{self.path}: {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class ConfigError(PipelineError, ValueError):
    """Invalid configuration value: "<param> must be <rule>, got <value>"."""


#: exit status of a preempted training run (EX_TEMPFAIL): a checkpoint was written, resubmitting resumes it
EXIT_PREEMPTED = 75


class Preempted(PipelineError):
    """Training stopped on a scheduler's signal after a checkpoint was written; ``--resume`` continues it."""
