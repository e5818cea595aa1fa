"""The test JVMs' class archive (batchscore.testing.jvm_archive): a JVM whose class path does not
match it still runs, and its one warning goes to stderr, never to stdout where the CLI reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batchscore.testing import jvm_archive

pytestmark = [pytest.mark.integration, pytest.mark.spark]
REPO = Path(__file__).resolve().parents[2]


def test_a_mismatched_class_path_runs_without_the_archive_and_warns_on_stderr(tmp_path: Path) -> None:
    archive = jvm_archive.ensure_archive(REPO / ".batchscore" / "cache" / "jvm-cds", python=sys.executable)
    if archive is None:
        pytest.skip("this JDK or interpreter cannot build a class archive")
    assert archive.stat().st_size > 1_000_000 and jvm_archive.java_options(archive).endswith(str(archive))
    proc = subprocess.run(["java", *jvm_archive.java_options(archive).split(), "-cp", str(tmp_path), "-version"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # nothing on stdout
    assert "shared archive" in proc.stderr and "version" in proc.stderr
