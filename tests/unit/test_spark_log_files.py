"""Spark's own log lines go to one file per job; the folder keeps only the newest files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchscore.jobs import _session as session


def test_log_files_are_rotated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSCORE_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(session, "KEEP_LOG_FILES", 3)
    for i in range(6):  # older jobs' files, oldest first
        f = tmp_path / f"batchscore-score-m-2026120{i}-000000-1.log"
        f.write_text("x")
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / "notes.txt").write_text("not a log of ours")
    new = Path(session.spark_log_file("batchscore-score-m"))
    assert new.parent == tmp_path and new.name.startswith("batchscore-score-m-") and not new.exists()
    kept = sorted(p.name for p in tmp_path.glob("batchscore-*.log"))
    assert kept == ["batchscore-score-m-20261204-000000-1.log", "batchscore-score-m-20261205-000000-1.log"]
    assert (tmp_path / "notes.txt").exists()
