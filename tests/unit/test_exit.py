"""Entry points end with ``exit_now``: the exit code survives and buffered output is not lost."""

from __future__ import annotations

import subprocess
import sys


def test_exit_now_keeps_the_code_and_flushes_piped_output() -> None:
    code = ("from batchscore.exit import exit_now; import sys; print('x' * 200000); sys.stderr.write('done'); "
            "exit_now(3)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3
    assert res.stdout == "x" * 200000 + "\n" and res.stderr == "done"


def test_cli_module_exits_with_the_bad_input_code_and_its_usage() -> None:
    res = subprocess.run([sys.executable, "-m", "batchscore", "no-such-verb"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert "unknown command 'no-such-verb'" in res.stderr and "exit codes:" in res.stderr
