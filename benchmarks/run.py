"""Run every ``benchmarks/bench_*.py`` in turn (``make bench``); each prints its own table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
only = sys.argv[1:]
failed = []
for script in sorted(here.glob("bench_*.py")):
    if only and script.stem.removeprefix("bench_") not in only:
        continue
    print(f"\n##### {script.name}", flush=True)
    if subprocess.call([sys.executable, str(script)]) != 0:
        failed.append(script.name)
if failed:
    print(f"benchmarks failed or missed their bars: {', '.join(failed)}")
    sys.exit(1)
