"""Errors shared by every batchscore layer, and the exit codes they map to.

Stdlib only: the reader (base install) and the Spark jobs both raise these. Every message is one
line that names the file, field, column or service at fault and says what to do about it.

Exit codes (the contract with Airflow and other orchestrators):

====  ==========================================================================
0     success
1     unexpected error (a bug: the traceback is printed)
2     bad input: config, model artifact, input table, a publish without a passing validation
3     validation rejected the candidate (do not retry: the data must change first)
4     infrastructure error (Redis/storage unreachable, lock held): safe to retry
====  ==========================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2
EXIT_REJECTED = 3
EXIT_INFRA = 4


class BatchscoreError(Exception):
    """Base class: a known failure with a one-line, actionable message."""

    exit_code = EXIT_UNEXPECTED


class ConfigError(BatchscoreError):
    """The model config file is missing, malformed or has a wrong/unknown field."""

    exit_code = EXIT_BAD_INPUT


class ModelError(BatchscoreError):
    """The model artifact is missing, not a model, or does not match the config."""

    exit_code = EXIT_BAD_INPUT


class InputDataError(BatchscoreError):
    """The input table is missing, empty, lacks a column, has a wrong type or duplicate keys."""

    exit_code = EXIT_BAD_INPUT


class PublishRefusedError(BatchscoreError):
    """Publishing was refused before anything changed (no passing validation, would not fit...)."""

    exit_code = EXIT_BAD_INPUT


class ValidationRejectedError(BatchscoreError):
    """The validation gate blocked the candidate; the run report lists every failed rule."""

    exit_code = EXIT_REJECTED


class InfrastructureError(BatchscoreError):
    """A service the run depends on failed (Redis unreachable, lock held): retrying may help."""

    exit_code = EXIT_INFRA


class FencedError(InfrastructureError):
    """This publisher's lock (its fencing token) is no longer current: it stopped before its next
    side effect. Retrying is safe; the retry takes the lock anew and resumes or is refused."""


class SupersededError(PublishRefusedError):
    """The run was published before and a later publication (a newer run or a rollback) replaced
    it: republishing it would move readers backwards. Exit 2: do not retry."""


def missing_extra(package: str, extra: str) -> BatchscoreError:
    """Error for an optional dependency that is not installed, naming the extra to install."""
    return BatchscoreError(
        f"{package} is not installed; install it with: pip install 'batchscore[{extra}]'"
    )
