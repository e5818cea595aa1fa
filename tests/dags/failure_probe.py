"""A failure callback for tests: appends one JSON line per call to $BATCHSCORE_TEST_FAILURES."""

from __future__ import annotations

import json
import os
from typing import Any

from _lib.callbacks import describe_failure
from _lib.retry import exit_code


def record(context: Any) -> None:
    ti, exc = context["ti"], context.get("exception")
    line = {"task": ti.task_id, "try": ti.try_number, "exit": exit_code(exc) if exc else None,
            "text": describe_failure(context)}
    with open(os.environ["BATCHSCORE_TEST_FAILURES"], "a") as out:
        out.write(json.dumps(line) + "\n")
