"""A Spark standalone worker that shares no disk with the driver.

The worker (and so every executor JVM and Python worker it forks) runs in a mount namespace of its
own (``unshare --mount --propagation private``), set up by :func:`namespace_script` before it
execs ``spark-class``:

* ``private`` (a host directory, empty on the host; made again inside when ``/tmp`` is hidden)
  gets a tmpfs: the worker's work dir, local dirs and artifact cache
  (``$BATCHSCORE_ARTIFACT_CACHE``) live there, visible only inside;
* the job environment (``/work/main/.venv``, which is INSIDE the repo) is bind-mounted read-only at
  ``<private>/venv``, so the worker still has Spark's jars and the executors a Python whose
  third-party packages resolve, with the repo itself gone;
* every hidden directory (``/tmp`` with pytest's temporary root, which holds the driver's working
  directory and local model/feature copies, and the driver's own Spark scratch dirs; the repo; the
  driver's artifact caches) gets an empty tmpfs over it.

Executors therefore get the code only from ``--py-files``, their Python only from ``--archives``,
data and the model only from the store and credentials only inside the task closures. The test
looks into the namespace from outside as root through ``/proc/<pid>/root`` and ``/proc/<pid>/ns/mnt``
(:class:`ProcessWatch` samples the worker's descendants while the job runs).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from .standalone import spark_home

#: Where the job environment appears inside the worker's namespace (relative to ``private``).
VENV_INSIDE = "venv"


def cannot_isolate() -> str | None:
    """Why a private mount namespace cannot be made here (None when it can)."""
    if sys.platform != "linux":
        return f"mount namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root: the worker's namespace mounts tmpfs over the driver's directories"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs batchscore-probe /mnt && umount /mnt"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        return f"unshare --mount does not work here: {probe.stderr.strip()[:200]}"
    return None


def mnt_ns(pid: int | str) -> str:
    """The mount namespace of ``pid`` (``mnt:[<inode>]``)."""
    return os.readlink(f"/proc/{pid}/ns/mnt")


def job_env() -> Path:
    """The job environment (the venv running the tests)."""
    return Path(sys.prefix).resolve()


def hidden_dirs(*dirs: Path) -> list[Path]:
    """The existing directories in ``dirs``, resolved, without those under another one (a tmpfs
    over the outer one already hides them)."""
    got = sorted({d.resolve() for d in dirs if d.is_dir()}, key=lambda p: len(p.parts))
    out: list[Path] = []
    for d in got:
        if not any(d == o or o in d.parents for o in out):
            out.append(d)
    return out


def namespace_script(private: Path, hidden: list[Path], env_dir: Path) -> str:
    """``sh -c`` text run inside the new mount namespace; ends by exec-ing its arguments.

    A hidden directory above ``private`` (``/tmp``) is covered first and ``private`` made again in
    the fresh tmpfs; the job environment is bind-mounted before the repo holding it is covered."""
    q = shlex.quote
    outer = [h for h in hidden if h in private.parents]
    venv = private / VENV_INSIDE
    lines = ["set -eu"]
    source = env_dir
    if any(h == env_dir or h in env_dir.parents for h in outer):
        # The job environment lives under a directory hidden first (a checkout under /tmp): bind it to
        # a staging point on a namespace-private tmpfs over /mnt first (nothing changes on the host).
        stage = Path("/mnt/batchscore-venv")
        lines += ["mount -t tmpfs -o mode=0755 batchscore-stage /mnt", f"mkdir -p {q(str(stage))}",
                  f"mount --bind {q(str(env_dir))} {q(str(stage))}"]
        source = stage
    lines += [f"mount -t tmpfs -o mode=1777 batchscore-hidden {q(str(d))}" for d in outer]
    lines += [f"mkdir -p {q(str(private))}",
              f"mount -t tmpfs -o mode=0755 batchscore-worker {q(str(private))}",
              "mkdir -p " + " ".join(q(str(d)) for d in (venv, private / "work", private / "local", private / "cache")),
              f"mount --bind {q(str(source))} {q(str(venv))}",
              f"mount -o remount,bind,ro {q(str(venv))}"]
    lines += [f"mount -t tmpfs -o mode=0755 batchscore-hidden {q(str(d))}" for d in hidden if d not in outer]
    return "\n".join([*lines, 'exec "$@"'])


def site_inside(private: Path) -> Path:
    """The job environment's site-packages as the worker's namespace shows it."""
    rel = Path(sysconfig.get_paths()["purelib"]).resolve().relative_to(job_env())
    return private / VENV_INSIDE / rel


def spark_home_inside(private: Path) -> Path:
    return private / VENV_INSIDE / spark_home().resolve().relative_to(job_env())


def isolated_env_archive(dest: Path, private: Path) -> Path:
    """Like ``standalone.thin_env_archive``, but its path line names the job environment's
    site-packages where the worker's namespace shows it (the host's path is hidden there, with the
    whole repo). Only third-party packages come from it: batchscore/udfs/jobs come from --py-files."""
    env_dir = dest / "isolated-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    (site / "job_env.pth").write_text(f"{site_inside(private)}\n")  # a path line: no .pth of the job env runs
    archive = dest / "isolated-env.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(env_dir, arcname=".")
    return archive


def spawn_isolated(args: list[str], log: Path, env: dict[str, str], private: Path, hidden: list[Path]
                   ) -> subprocess.Popen[bytes]:
    """``spark-class <args>`` in a private mount namespace (unshare and sh exec into the JVM, so
    the pid is the JVM's; its own session lets teardown signal it and the executors it forks)."""
    script = namespace_script(private, hidden, job_env())
    spark_class = spark_home_inside(private) / "bin" / "spark-class"
    with log.open("wb") as out:
        return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                                 str(spark_class), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


@dataclass
class IsolatedWorker:
    pid: int
    private: Path  # a host path: the worker's private tmpfs inside its namespace, an empty dir outside
    hidden: list[Path]
    logs: Path

    def inside(self, path: Path | str) -> Path:
        """``path`` as the worker's namespace shows it, read from outside (root only)."""
        return Path(f"/proc/{self.pid}/root") / Path(path).relative_to("/")

    @property
    def cache(self) -> Path:
        return self.private / "cache"

    @property
    def work(self) -> Path:
        return self.private / "work"

    def log_tail(self, chars: int = 3000) -> str:
        files = sorted(self.logs.glob("*.log"))
        try:
            files += sorted(self.inside(self.work).glob("app-*/*/stderr"))
        except OSError:  # the worker is gone: its tmpfs with it
            pass
        out = []
        for f in files:
            try:
                out.append(f"--- {f}\n{f.read_text(errors='replace')[-chars:]}")
            except OSError as e:
                out.append(f"--- {f}: {e}")
        return "\n".join(out)


def _parents() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        out[int(entry)] = int(stat[stat.rindex(b")") + 2:].split()[1])  # field 4, after "(comm) S"
    return out


def descendants(pid: int) -> list[int]:
    parents = _parents()
    out, frontier = [], {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier}
        out += sorted(frontier)
    return out


@dataclass
class Seen:
    """One descendant of the worker, as sampled while it ran."""

    pid: int
    cmdline: list[str]
    mnt: str
    env_names: set[str]
    sees: dict[str, bool]  # path -> whether it existed in the process's view

    @property
    def kind(self) -> str:
        text = " ".join(self.cmdline)
        if "CoarseGrainedExecutorBackend" in text:
            return "executor"
        if "pyspark.daemon" in text or "pyspark.worker" in text:
            return "python"
        return "other"


@dataclass
class ProcessWatch:
    """Samples the worker's descendants (executor JVMs, Python workers) every ``interval`` s in a
    background thread: their mount namespace, environment variable names and whether ``probes``
    (host paths) exist in their view of the filesystem."""

    root: int
    probes: list[Path]
    interval: float = 0.1
    seen: dict[int, Seen] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="process-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in descendants(self.root):
                if pid not in self.seen or self.seen[pid].kind == "other":  # exec may change the cmdline
                    self._sample(pid)
            time.sleep(self.interval)

    def _sample(self, pid: int) -> None:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
            sees = {str(p): Path(f"/proc/{pid}/root").joinpath(p.relative_to("/")).exists() for p in self.probes}
            seen = Seen(pid, [c for c in cmdline if c], mnt_ns(pid), {e.split("=", 1)[0] for e in environ if e}, sees)
        except OSError:  # gone meanwhile
            return
        self.seen[pid] = seen

    def of_kind(self, kind: str) -> list[Seen]:
        return [s for s in self.seen.values() if s.kind == kind]
