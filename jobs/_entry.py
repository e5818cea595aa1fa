"""What every job entry point shares: common arguments, logging, error -> exit code mapping."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from batchscore.errors import EXIT_OK, EXIT_UNEXPECTED, BatchscoreError


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on whatever ``sys.stderr`` is when a record is written (it may be replaced after
    the handler is made, e.g. by a caller capturing output)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


_HANDLER: logging.Handler | None = None


def configure_logging(*, verbose: bool = False) -> None:
    """The CLI's one handler: ``batchscore.*`` loggers to stderr as ``[batchscore HH:MM:SS] msg``
    (INFO; DEBUG with ``--verbose``). Library modules only call ``logging.getLogger(__name__)``."""
    global _HANDLER
    root = logging.getLogger("batchscore")
    if _HANDLER is None:
        _HANDLER = _Stderr()
        _HANDLER.setFormatter(logging.Formatter("[batchscore %(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        root.addHandler(_HANDLER)
        root.propagate = False
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def log(msg: str) -> None:
    """Progress of a job step (INFO on the ``batchscore.jobs`` logger)."""
    logging.getLogger("batchscore.jobs").info(msg)


def _run_date(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"--run-date {value!r}: expected YYYY-MM-DD") from None


def parser(verb: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"batchscore {verb}", description=description)
    p.add_argument("--model-config", required=True, help="path to conf/models/<name>.yaml")
    p.add_argument("--run-date", type=_run_date, default=date.today().isoformat(),
                   help="the date the run scores (YYYY-MM-DD, default today)")
    p.add_argument("--run-id", help="run identifier [A-Za-z0-9_.-]; default: new for score/run, "
                   "the latest scored run for validate/publish")
    p.add_argument("--master", help="Spark master when not under spark-submit (default: the config's spark.master)")
    p.add_argument("--verbose", action="store_true",
                   help="Spark's own log lines and progress bars on the console (default: a log file, named at start)")
    return p


def guarded(fn: Callable[[], object], *, verbose: bool = False) -> int:
    """Run a job body; known errors become one line on stderr and their exit code."""
    configure_logging(verbose=verbose)
    try:
        fn()
        return EXIT_OK
    except BatchscoreError as exc:
        print(f"batchscore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("batchscore: interrupted; nothing was published past the last completed step", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return EXIT_UNEXPECTED


def executor_error(exc: BaseException) -> BatchscoreError | None:
    """Recover a batchscore error raised inside a Spark task from the wrapped Python exception."""
    from batchscore import errors

    text = str(exc)
    for name in ("FencedError", "ModelError", "InputDataError", "InfrastructureError", "PublishRefusedError"):
        m = re.search(rf"{name}: (.+)", text)
        if m:
            return getattr(errors, name)(m.group(1).strip())
    if "ConnectionError" in text or "Connection refused" in text:
        return errors.InfrastructureError("Redis became unreachable while loading; rerun the publish (it resumes)")
    return None


def summary(title: str, items: dict[str, Any]) -> None:
    width = max(len(k) for k in items)
    lines = [f"  {k.ljust(width)} : {v}" for k, v in items.items()]
    print(f"\n== {title} ==\n" + "\n".join(lines), flush=True)


def argv_or_sys(argv: Sequence[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)
