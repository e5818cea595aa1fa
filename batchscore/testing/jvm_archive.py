"""A class-data-sharing archive of Spark's driver classes, so the many short JVMs a test run starts
(the session fixture, every CLI and ``spark-submit`` subprocess) map Spark's classes instead of
loading and verifying them one by one.

The archive is built once per Java runtime and Spark jar set (a warm-up ``local[2]`` job run with
``-XX:ArchiveClassesAtExit``), cached under ``.batchscore/cache/jvm-cds/``, and named by a key over
``java -version`` and the jars' names, sizes and modification times, so a new Spark or JDK builds a
new one. A JVM whose class path does not match the archive (another ``--driver-class-path``, a
changed jar) runs exactly as without it: it logs one warning, which :func:`java_options` sends to
stderr with the JVM's other warnings instead of stdout, where the CLI prints its reports.

Test-only: user runs keep the JVM's defaults. Nothing here imports pyspark; the warm-up job runs in
a subprocess of the given interpreter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["ensure_archive", "java_options"]

# Short-lived JVMs: C1-only JIT and the serial GC (the archive is built and used with the same flags).
BASE_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
# The JVM logs warnings to stdout by default; the CLI's reports are on stdout.
LOG_OPTIONS = "-Xlog:disable -Xlog:all=warning:stderr"

# A warm-up that loads what the suite's jobs load: Arrow batches to and from Python workers
# (mapInArrow, a pandas_udf), Parquet written and read back, a shuffle and an aggregate.
_WARM_UP = r"""
import sys, tempfile
from pyspark.sql import SparkSession, functions as F
from pyspark.sql.functions import pandas_udf
spark = (SparkSession.builder.master("local[2]").appName("batchscore-jvm-archive")
         .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
df = spark.range(0, 20000, numPartitions=2).withColumn("x", F.rand(1).cast("float"))
df = df.mapInArrow(lambda it: it, df.schema)
@pandas_udf("double")
def twice(s):
    return s * 2.0
out = tempfile.mkdtemp()
df.withColumn("y", twice("x")).write.mode("overwrite").parquet(out)
back = spark.read.parquet(out)
back.groupBy((F.col("id") % 7).alias("k")).agg(F.sum("y"), F.count("*")).collect()
back.toArrow() if hasattr(back, "toArrow") else back.toPandas()
spark.stop()
"""


def _pyspark_home(python: str) -> str | None:
    """pyspark's folder for ``python``: found without importing it for this interpreter (a
    subprocess costs ~0.5 s a pytest session), asked of another one in a subprocess."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        import importlib.util

        spec = importlib.util.find_spec("pyspark")
        return os.path.dirname(spec.origin) if spec is not None and spec.origin else None
    return subprocess.run([python, "-c", "import pyspark, os; print(os.path.dirname(pyspark.__file__))"],
                          capture_output=True, text=True, timeout=120, check=True).stdout.strip() or None


def _key(python: str) -> str | None:
    """Java's version and the Spark jars the interpreter's pyspark ships (None without them)."""
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60).stderr
        home = _pyspark_home(python)
    except (OSError, subprocess.SubprocessError):
        return None
    if home is None:
        return None
    jars = Path(home) / "jars"
    if not jars.is_dir():
        return None
    h = hashlib.sha256(java.encode())
    h.update(BASE_OPTIONS.encode())
    for jar in sorted(jars.glob("*.jar")):
        st = jar.stat()
        h.update(f"{jar.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def ensure_archive(cache_dir: Path, *, python: str = sys.executable, timeout_s: float = 300) -> Path | None:
    """The archive for this JDK and the interpreter's Spark, built now if absent; None when it
    cannot be built (no Java, no pyspark, a JDK without dynamic archives): JVMs then run without."""
    key = _key(python)
    if key is None:
        return None
    archive = cache_dir / f"spark-{key}.jsa"
    if archive.is_file() and archive.stat().st_size > 0:
        return archive
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".spark-{key}-", suffix=".jsa", dir=cache_dir)
    os.close(fd)
    os.unlink(partial)  # the JVM writes it at exit
    env = {**os.environ, "PYSPARK_PYTHON": python,
           "SPARK_SUBMIT_OPTS": f"{BASE_OPTIONS} {LOG_OPTIONS} -XX:ArchiveClassesAtExit={partial}"}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    t0 = time.monotonic()
    print(f"batchscore tests: building the JVM class archive once ({archive.name}) ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run([python, "-c", _WARM_UP], env=env, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"batchscore tests: no JVM class archive ({exc}); JVMs start without it", file=sys.stderr)
        return None
    if proc.returncode != 0 or not os.path.isfile(partial):
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        print(f"batchscore tests: no JVM class archive (warm-up exit {proc.returncode}: {' | '.join(tail)}); "
              "JVMs start without it", file=sys.stderr)
        Path(partial).unlink(missing_ok=True)
        return None
    os.replace(partial, archive)  # atomic: a concurrent run sees a whole archive or none
    for old in cache_dir.glob("spark-*.jsa"):  # ~150-200 MB each: keep only this JDK and Spark's
        if old != archive:
            old.unlink(missing_ok=True)
    print(f"batchscore tests: JVM class archive built in {time.monotonic() - t0:.0f}s", file=sys.stderr)
    return archive


def java_options(archive: Path | None) -> str:
    """``SPARK_SUBMIT_OPTS`` for a test JVM: the short-lived-JVM flags, plus the archive if any."""
    opts = f"{BASE_OPTIONS} {LOG_OPTIONS}"
    return f"{opts} -XX:SharedArchiveFile={archive}" if archive is not None else opts
