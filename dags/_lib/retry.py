"""Retry decisions from batchscore's exit codes (Airflow 3.3 ``retry_policy``).

The jobs exit 0 ok, 1 unexpected, 2 bad input/config, 3 validation rejected, 4 infrastructure.
The Spark provider turns a non-zero spark-submit exit into
``AirflowException("Cannot execute: ... Error code is: N. ...")`` (client mode returns the driver's
exit code; on Kubernetes it also reports "Kubernetes spark exit code is: N"). Bad input and
rejections fail at once: retrying cannot fix them and would only delay the alert. Infrastructure
errors retry; anything else follows the task's normal ``retries``.
Imports only the Task SDK and the stdlib.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from airflow.sdk import RetryDecision, RetryPolicy

if TYPE_CHECKING:
    from airflow.sdk.definitions.context import Context

EXIT_MEANING = {1: "unexpected error", 2: "bad input or config", 3: "validation rejected", 4: "infrastructure error"}
NO_RETRY = frozenset({2, 3})
RETRY = frozenset({4})
_K8S_CODE = re.compile(r"Kubernetes spark exit code is: (-?\d+)")
_SUBMIT_CODE = re.compile(r"Error code is: (-?\d+)")


def exit_code(exc: BaseException) -> int | None:
    """The job's exit code from the provider's failure message, or None if there is none.

    >>> exit_code(Exception("Cannot execute: spark-submit ... Error code is: 3."))
    3
    >>> exit_code(Exception("Error code is: 0. Kubernetes spark exit code is: 4"))
    4
    >>> exit_code(TimeoutError("timed out")) is None
    True
    """
    text = str(exc)
    for pattern in (_K8S_CODE, _SUBMIT_CODE):
        match = pattern.search(text)
        if match and int(match.group(1)) != 0:
            return int(match.group(1))
    return None


class ExitCodeRetryPolicy(RetryPolicy):
    """Fail at once on exit 2/3, retry on 4, otherwise the task's standard retry logic.

    Evaluated by the task runner in the worker process; only ``has_retry_policy`` is serialized,
    so no ``serialize()`` is needed. A policy can shorten retries, never exceed ``retries``.
    """

    def evaluate(
        self,
        exception: BaseException,
        try_number: int,
        max_tries: int,
        context: Context | None = None,
    ) -> RetryDecision:
        code = exit_code(exception)
        if code in NO_RETRY:
            return RetryDecision.fail(reason=f"batchscore exited {code} ({EXIT_MEANING[code]}): not retrying")
        if code in RETRY:
            return RetryDecision.retry(reason=f"batchscore exited {code} ({EXIT_MEANING[code]}): retrying")
        return RetryDecision.default()
