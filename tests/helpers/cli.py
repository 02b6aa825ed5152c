"""Running the ``itkm`` command in the tests: in this process (:func:`cli_inproc`), as a real
subprocess to completion (:func:`run_cli`) or in the background to be killed (:func:`spawn_cli`),
and the check of a user-caused failure's answer (:func:`one_line`).

In-process is the default: a fresh interpreter spends seconds importing torch (several times
that on a busy machine).  A real process is for what only a real process shows: a kill, a
second process holding the workspace, the command line as a user types it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]

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


class CliResult(NamedTuple):
    """What an in-process ``itkm`` run returned: ``rc, out, err = cli_inproc(...)``, or
    ``cli_inproc(...)[::2]`` for ``(rc, err)``."""

    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        """stderr then stdout (the progress log, then the command's answer)."""
        return self.err + self.out


def cli_inproc(*args: str | os.PathLike, expect: int | None = None) -> CliResult:
    """Run ``itkm ARGS`` with the CLI's own ``main`` in this process, stdout and stderr captured.

    An argparse refusal (``SystemExit``) becomes its exit code.  With ``expect``, the exit code
    must be that and no traceback may have been printed."""
    from itkm_engine.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main([os.fspath(a) for a in args])
        except SystemExit as exc:  # argparse: usage + one error line, exit 2
            rc = exc.code
    result = CliResult(rc, out.getvalue(), err.getvalue())
    if expect is not None:
        assert rc == expect, f"itkm {' '.join(map(str, args))} exited {rc}, expected {expect}\n{result.text}"
        assert "Traceback" not in result.text, result.text
    return result


def one_line(rc: int, err: str, command: str) -> str:
    """The CLI's answer to a user-caused failure: exit 2, no traceback, one line naming the
    command (``itkm COMMAND: ...``).  Returns that line."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"itkm {command}: ")]
    assert len(lines) == 1, err
    return lines[0]


# -- the real command -----------------------------------------------------------------------------
def cli_cmd(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "itkm_engine.cli", *[os.fspath(a) for a in args]]


def run_cli(*args: str | os.PathLike, timeout: float = 600, check: bool | None = True) -> subprocess.CompletedProcess:
    """Run the CLI to completion in a subprocess.  ``check=True``: exit 0 required; ``False``:
    non-zero required; ``None``: anything."""
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
    """Start the CLI in a subprocess and return at once; its stderr lines are collected."""
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
