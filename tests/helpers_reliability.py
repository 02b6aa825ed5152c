"""Shared tools of the reliability tests: run and kill the real ``itkm`` CLI, and check that a
workspace is whole afterwards.

The reliability tests treat the engine as a black box the way an operator does: a subprocess
``python -m itkm_engine.cli ...`` that may be killed with SIGKILL at any moment.  What must hold
after every such kill is collected in :func:`assert_workspace_whole` so that every scenario checks
the same list (database integrity, no duplicate rows, no half-written files, a takeable lock).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: Environment of every CLI subprocess: offline, unbuffered (markers arrive as they are printed),
#: a fixed hash seed (deterministic runs), the repository importable without installing.
CLI_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONHASHSEED": "0",
    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
}


def cli_cmd(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "itkm_engine.cli", *[os.fspath(a) for a in args]]


def run_cli(*args: str | os.PathLike, timeout: float = 600, check: bool | None = True) -> subprocess.CompletedProcess:
    """Run the CLI to completion.  ``check=True``: exit 0 required; ``False``: non-zero required;
    ``None``: anything."""
    p = subprocess.run(cli_cmd(*args), env=CLI_ENV, cwd=REPO, capture_output=True, timeout=timeout)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    p.stdout, p.stderr = out, err  # type: ignore[assignment]
    if check is True and p.returncode != 0:
        raise AssertionError(f"itkm {' '.join(map(str, args))} exited {p.returncode}\nstdout:\n{out}\nstderr:\n{err}")
    if check is False and p.returncode == 0:
        raise AssertionError(f"itkm {' '.join(map(str, args))} succeeded but should have failed\n{out}\n{err}")
    return p


@dataclass
class Running:
    """A CLI subprocess whose stderr is collected by a thread (so markers can be waited for)."""

    proc: subprocess.Popen
    started: float
    lines: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def text(self) -> str:
        with self.cond:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> bool:
        """Block until a stderr line matches ``pattern`` (True) or the process ended / timed out."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    if rx.search(line):
                        return True
                seen = len(self.lines)
                if self.proc.poll() is not None and not self._reader_alive():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.05))

    def _reader_alive(self) -> bool:
        return getattr(self, "_reader", None) is not None and self._reader.is_alive()

    def kill9(self) -> int | None:
        """SIGKILL (no cleanup of any kind runs in the child).  Returns the exit code if the
        process had already finished by itself, else None."""
        rc = self.proc.poll()
        if rc is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        if getattr(self, "_reader", None) is not None:
            self._reader.join(timeout=10)
        return rc


def spawn_cli(*args: str | os.PathLike) -> Running:
    proc = subprocess.Popen(cli_cmd(*args), env=CLI_ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    run = Running(proc, time.monotonic())

    def pump() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            with run.cond:
                run.lines.append(raw.decode("utf-8", "replace"))
                run.cond.notify_all()
        with run.cond:
            run.cond.notify_all()

    t = threading.Thread(target=pump, daemon=True)
    run._reader = t  # type: ignore[attr-defined]
    t.start()
    return run


def wait_db(ws: Path, sql: str, timeout: float = 300, proc: Running | None = None) -> bool:
    """Poll the workspace database read-only until ``sql`` returns a truthy first cell.

    A second reader is what the app does while training runs; in WAL mode it never blocks the
    writer.  Returns False when the process ended or the time ran out first."""
    db = ws / "itkm.sqlite"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.proc.poll() is not None:
            return False
        if db.exists():
            try:
                con = sqlite3.connect(db.as_uri() + "?mode=ro", uri=True, timeout=5)
                try:
                    row = con.execute(sql).fetchone()
                finally:
                    con.close()
                if row and row[0]:
                    return True
            except sqlite3.Error:
                pass
        time.sleep(0.05)
    return False


# -- what must hold after a kill ------------------------------------------------------------------
def tmp_leftovers(ws: Path) -> list[Path]:
    return sorted(p for p in ws.rglob(".tmp-*"))


def sqlite_checks(ws: Path) -> dict:
    """integrity_check, foreign keys, duplicate keys and counts, read through a read-only
    connection (what any second reader would see)."""
    con = sqlite3.connect((ws / "itkm.sqlite").as_uri() + "?mode=ro", uri=True, timeout=10)
    try:
        integrity = [r[0] for r in con.execute("PRAGMA integrity_check")]
        fk = con.execute("PRAGMA foreign_key_check").fetchall()
        dup_images = con.execute(
            "SELECT count(*) - count(DISTINCT source_id || char(1) || relpath) FROM images").fetchone()[0]
        dup_rejects = con.execute(
            "SELECT count(*) - count(DISTINCT source_id || char(1) || relpath) FROM rejects").fetchone()[0]
        dup_epochs = con.execute(
            "SELECT count(*) - count(DISTINCT round || char(1) || stage || char(1) || epoch) FROM epochs").fetchone()[0]
        images = con.execute("SELECT count(*) FROM images").fetchone()[0]
        rejects = con.execute("SELECT count(*) FROM rejects").fetchone()[0]
        version = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    finally:
        con.close()
    return dict(integrity=integrity, fk=fk, dup_images=dup_images, dup_rejects=dup_rejects,
                dup_epochs=dup_epochs, images=images, rejects=rejects, version=version)


def load_every_file(ws: Path, extra: list[Path] = ()) -> dict[str, int]:
    """Open every engine-written file by its real reader; a half-written one raises here.

    Temporaries (``.tmp-*``) are skipped: they are the only files allowed to be partial, and the
    next writer open removes them."""
    from itkm_engine.model.checkpoint import load_checkpoint

    counts = {"pt": 0, "npz": 0, "npy": 0, "csv": 0, "toml": 0}
    files = [p for p in ws.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")] + list(extra)
    for p in files:
        if p.suffix == ".pt":
            state = load_checkpoint(p)
            assert isinstance(state, dict) and "model" in state, p
            counts["pt"] += 1
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                for k in z.files:
                    z[k]  # noqa: B018 - decompress every member
            counts["npz"] += 1
        elif p.suffix == ".npy":
            np.load(p, allow_pickle=False)
            counts["npy"] += 1
        elif p.suffix == ".csv":
            rows = read_csv(p)
            assert rows and rows[0][0] == "identity_id", p
            assert all(len(r) == len(rows[0]) for r in rows), p
            counts["csv"] += 1
        elif p.suffix == ".toml":
            from itkm_engine.config import Config

            Config.load(p)
            counts["toml"] += 1
    return counts


def read_csv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def assert_workspace_whole(ws: Path, extra_files: list[Path] = ()) -> dict:
    """Everything that must hold of a workspace after a kill (before or after the rerun).

    * the database passes ``PRAGMA integrity_check`` and its foreign keys hold;
    * no duplicate image / reject / epoch-log rows;
    * it opens read-only (while the stale lock may still be there) and for writing (which takes
      over the dead holder's lock and removes ``.tmp-*`` files left by the interrupted write);
    * every checkpoint, feature chunk, array, CSV and config file loads completely.
    """
    from itkm_engine.workspace import Workspace

    info = sqlite_checks(ws)
    assert info["integrity"] == ["ok"], info
    assert info["fk"] == [], info
    assert info["dup_images"] == 0 and info["dup_rejects"] == 0 and info["dup_epochs"] == 0, info
    with Workspace.open(ws, readonly=True) as ro:
        ro.cameras()
        ro.images(include_missing=True)
        ro.rounds()
    with Workspace.open(ws) as w:  # the writer lock of a killed process must not stand in the way
        assert w.lock_path.exists()
        assert tmp_leftovers(ws) == [], tmp_leftovers(ws)
    assert not (ws / "workspace.lock").exists()
    info["files"] = load_every_file(ws, list(extra_files))
    return info


# -- the user's files ----------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[bytes, tuple]:
    """Every entry under ``folder`` (not following links) -> (kind, sha256, size, mtime_ns).

    Keys are raw bytes so non-UTF-8 names compare exactly."""
    out: dict[bytes, tuple] = {}
    root = os.fsencode(folder)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif os.path.isdir(p):
                out[rel] = ("dir", st.st_mode)
            elif os.path.isfile(p):
                h = hashlib.sha256()
                try:
                    with open(p, "rb") as fh:
                        h.update(fh.read())
                    digest = h.hexdigest()
                except OSError:
                    digest = "unreadable"
                out[rel] = ("file", digest, st.st_size, st.st_mtime_ns, st.st_mode)
            else:
                out[rel] = ("other", st.st_mode, st.st_mtime_ns)
    return out


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def one_line(rc: int, err: str, command: str) -> str:
    """An in-process CLI answer to a user-caused failure: exit 2, no traceback, one line naming
    the command (``itkm COMMAND: ...``).  Returns that line."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"itkm {command}: ")]
    assert len(lines) == 1, err
    return lines[0]


def cli_inproc(*args: str | os.PathLike) -> tuple[int, str, str]:
    """``itkm ARGS`` in this process (a subprocess costs 1-2 s): (exit status, stdout, stderr).
    A usage error (argparse's ``SystemExit``) comes back as its status like any other."""
    import contextlib

    from itkm_engine.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main([os.fspath(a) for a in args])
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()
