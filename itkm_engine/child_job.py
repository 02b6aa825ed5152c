"""Run heavy engine work in a child process and relay it to a Reporter (the parent's side).

Why (``docs/adr/0008-jobs-in-a-child-process.md``): a training round, feature extraction or the
UMAP projection in a thread of the desktop app shares the GIL with the GUI thread; when other
processes saturate the cores, a worker preempted while holding the GIL freezes the window.  In a
child process the work has its own interpreter, and a child that dies (out of memory, a CUDA
error, ``kill -9``) takes nothing else with it.

The protocol is JSON lines.  The parent writes one request line to the child's stdin
(``{"kind", "workspace", "config" (TOML text), "params"}``) and later, optionally,
``{"type": "cancel"}``; closing stdin means "the parent is gone: stop".  The child
(``python -m itkm_engine.worker``) writes to its stdout one object per line:

    {"type": "event", <ProgressEvent fields>}   {"type": "log", "level", "text", "time"}
    {"type": "result", "value"}                 {"type": "cancelled"}
    {"type": "error", "error": <type name>, "user": <ItkmError?>, "message", "traceback"}

Its stderr (warnings, library output) is kept as the tail of the log.

:func:`run_child` is an ordinary engine job function: it takes a ``reporter``, re-emits the
child's events and logs through it, polls ``reporter.cancel`` and escalates a cancel request:
the cancel message, then SIGTERM after ``cancel_grace_s``, then SIGKILL after ``term_grace_s``.
A child holding the workspace's writer lock gets it lent by the parent's open
:class:`~itkm_engine.workspace.Workspace` (:meth:`~itkm_engine.workspace.Workspace.lend_writer`),
which reads the workspace read-only meanwhile and takes the lock back afterwards.  Nothing here
imports torch.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import fields
from pathlib import Path
from typing import Any

from .errors import Cancelled, ItkmError
from .progress import LogMessage, ProgressEvent, Reporter
from .projection import projection_path
from .records import RoundResult

__all__ = ["run_child", "compute_in_child", "cached_in_session", "ChildJobError", "ChildDiedError",
           "event_to_json", "event_from_json", "worker_command", "CANCEL_GRACE_S", "TERM_GRACE_S"]

#: After a cancel message, how long the child may take to stop on its own (it checks once per
#: batch) before it gets SIGTERM, and how long after SIGTERM before SIGKILL.
CANCEL_GRACE_S = 20.0
TERM_GRACE_S = 10.0
#: Lines of the child's log kept for the message when it dies.
TAIL_LINES = 12
#: How often the parent looks at the cancel token while the child is quiet.
POLL_S = 0.1
#: After the child exited, how long its pipes may stay open (held by a grandchild) before we stop reading.
EXIT_DRAIN_S = 2.0

_EVENT_FIELDS = tuple(f.name for f in fields(ProgressEvent))


class ChildJobError(ItkmError):
    """The child process reported an error.  ``details`` holds its traceback and last log lines."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class ChildDiedError(ChildJobError):
    """The child process ended without a result (killed, crashed, out of memory)."""


# -- the protocol ------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """JSON fallback: numpy scalars/arrays and paths."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return repr(obj)


def dumps(obj: dict) -> str:
    return json.dumps(obj, default=_plain, allow_nan=True, separators=(",", ":"))


def event_to_json(event: ProgressEvent) -> str:
    d = {name: getattr(event, name) for name in _EVENT_FIELDS}
    d["losses"], d["metrics"] = dict(event.losses), dict(event.metrics)
    return dumps({"type": "event", **d})


def event_from_json(msg: dict) -> ProgressEvent:
    return ProgressEvent(**{k: msg[k] for k in _EVENT_FIELDS if k in msg})


def worker_command() -> list[str]:
    """The child's command line: this interpreter, the engine's own entry point."""
    return [sys.executable, "-m", "itkm_engine.worker"]


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # the child must run this very engine, whether it is installed or a source checkout
    root = str(Path(__file__).resolve().parents[1])
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in parts if p != root])
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


# -- the parent side ---------------------------------------------------------------------------
def run_child(kind: str, ws, params: dict | None = None, *, cfg=None, reporter: Reporter,
              cancel_grace_s: float = CANCEL_GRACE_S, term_grace_s: float = TERM_GRACE_S,
              env: dict[str, str] | None = None, what: str | None = None, nice: int = 0) -> Any:
    """Run job ``kind`` of ``itkm_engine.worker`` on workspace ``ws`` (an open Workspace or a path).

    An open writable Workspace lends its writer lock to the child for the duration.  Returns the
    child's result (decoded per kind, see :func:`decode_result`); raises :class:`Cancelled` when
    the job stopped on request, :class:`ChildJobError` when the child reported an error, and
    :class:`ChildDiedError` when it ended without a word (killed, crashed).  ``nice`` lowers the
    child's scheduling priority (its own process: no GIL is shared, so no priority inversion).
    """
    from contextlib import nullcontext

    path = Path(getattr(ws, "path", ws))
    lend = ws.lend_writer() if hasattr(ws, "lend_writer") and not ws.readonly else nullcontext()
    owner = getattr(ws, "owner", None)  # the app: its child's lock says "itkm-app: training"
    request = {"kind": kind, "workspace": str(path), "config": cfg.to_toml() if cfg is not None else None,
               "params": params or {}, "nice": int(nice), "owner": f"{owner}: {what or kind}" if owner else None}
    with lend:
        value = _run(request, reporter, cancel_grace_s, term_grace_s, env, what or kind)
    return decode_result(kind, value)


def decode_result(kind: str, value: Any) -> Any:
    if kind == "train":
        return [RoundResult(int(r["round"]), Path(r["checkpoint"]), float(r["seconds"]), list(r.get("epochs", [])))
                for r in value]
    return value


def _run(request: dict, reporter: Reporter, cancel_grace_s: float, term_grace_s: float,
         env: dict[str, str] | None, what: str) -> Any:
    reporter.check()
    try:
        proc = subprocess.Popen(worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0, env=_child_env(env), start_new_session=True)
    except OSError as exc:
        raise ChildJobError(f"cannot start the {what} process ({exc.strerror or exc}); check that ITKM Studio "
                            "is installed completely") from exc
    reporter.log(f"{what}: worker process {proc.pid} started", "debug")
    relay = _Relay(reporter)
    cancel_at = term_at = kill_at = exited_at = None
    _send(proc, request)
    # One thread (this one) reads both pipes in large chunks: few wake-ups and little time holding
    # the GIL, which the GUI thread of the same process needs.
    sel = selectors.DefaultSelector()
    for stream, tag in ((proc.stdout, "out"), (proc.stderr, "err")):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream.fileno(), selectors.EVENT_READ, tag)
    pending = {"out": b"", "err": b""}
    try:
        while sel.get_map():
            now = time.monotonic()
            if reporter.cancelled and cancel_at is None:
                cancel_at = now
                _send(proc, {"type": "cancel"})
            if cancel_at is not None and term_at is None and now - cancel_at > cancel_grace_s and proc.poll() is None:
                term_at = now
                reporter.log(f"{what}: the worker did not stop within {cancel_grace_s:.0f} s; terminating it", "warning")
                _signal(proc, signal.SIGTERM)
            if term_at is not None and kill_at is None and now - term_at > term_grace_s and proc.poll() is None:
                kill_at = now
                reporter.log(f"{what}: the worker ignored SIGTERM for {term_grace_s:.0f} s; killing it", "warning")
                _signal(proc, signal.SIGKILL)
            if proc.poll() is not None:  # exited: a grandchild holding the pipes must not keep us here
                exited_at = exited_at or now
                if now - exited_at > EXIT_DRAIN_S:
                    break
            for key, _ in sel.select(POLL_S):
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                tag = key.data
                if not chunk:  # end of stream
                    sel.unregister(key.fd)
                    chunk, pending[tag] = pending[tag] + b"\n", b""
                else:
                    chunk, pending[tag] = pending[tag] + chunk, b""
                *lines, pending[tag] = chunk.split(b"\n")
                relay.lines(tag, lines)
    finally:
        sel.close()
        if proc.poll() is None:  # we are leaving early (a bug above): never leave it behind
            _signal(proc, signal.SIGKILL)
        proc.wait()
        for s in (proc.stdin, proc.stdout, proc.stderr):
            try:
                s.close()
            except OSError:
                pass
    return _outcome(relay.outcome, proc.returncode, cancel_at is not None, relay.tail, what)


class _Relay:
    """Turns the child's lines into the reporter's events and log messages; keeps the log's tail."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.outcome: dict | None = None

    def lines(self, tag: str, lines: list[bytes]) -> None:
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if not line.strip():
                continue
            msg = _parse(line) if tag == "out" else None
            if msg is None:
                self.tail.append(line)
                self.reporter.log(line, "debug")
                continue
            t = msg.get("type")
            if t == "event":
                self.reporter.forward(event_from_json(msg))
            elif t == "log":
                text = str(msg.get("text", ""))
                self.tail.append(text)
                if self.reporter.on_log is not None:
                    self.reporter.on_log(LogMessage(str(msg.get("level", "info")), text,
                                                    float(msg.get("time", time.time()))))
            elif t in ("result", "error", "cancelled"):
                self.outcome = msg


def _send(proc: subprocess.Popen, msg: dict) -> None:
    try:
        proc.stdin.write((dumps(msg) + "\n").encode("utf-8"))
        proc.stdin.flush()
    except (OSError, ValueError):
        pass  # it has exited; its stderr and exit status say why


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except OSError:
        pass


def _parse(line: str) -> dict | None:
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def _outcome(msg: dict | None, returncode: int, cancel_requested: bool, tail: deque, what: str) -> Any:
    last = "\n".join(tail)
    if msg is not None and msg["type"] == "result":
        return msg.get("value")
    if msg is not None and msg["type"] == "cancelled":
        raise Cancelled("cancelled on request")
    if msg is not None and msg["type"] == "error":
        message = str(msg.get("message", ""))
        details = str(msg.get("traceback", "")) + (f"\nLast log lines:\n{last}" if last else "")
        if msg.get("user"):
            raise ChildJobError(message, details)
        raise ChildJobError(_explain(str(msg.get("error", "Exception")), message, what), details)
    if cancel_requested:  # stopped by SIGTERM/SIGKILL after a cancel: still a cancel
        raise Cancelled("cancelled on request (the worker process was stopped)")
    raise ChildDiedError(_died(returncode, what) + (f"\n\nLast log lines:\n{last}" if last else ""), last)


RESUME_HINT = ("The workspace keeps everything up to the last completed epoch: start training again to resume "
               "the round.")


def _explain(error: str, message: str, what: str) -> str:
    low = message.lower()
    if "outofmemory" in error.lower() or error == "MemoryError" or "out of memory" in low \
            or "can't allocate memory" in low:
        return (f"the {what} ran out of memory ({error}: {message}). Use a smaller preset or batch size, or "
                f"close other programs. {RESUME_HINT}")
    if "cuda" in low or "cuda" in error.lower() or "AcceleratorError" in error:
        return (f"the GPU failed during the {what} ({error}: {message}). Restart the computer's GPU driver or "
                f"choose the CPU as device. {RESUME_HINT}")
    return f"unexpected error in the {what} ({error}): {message}. {RESUME_HINT}"


def _died(returncode: int, what: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = {"SIGKILL": " -- killed from outside, often by the system when memory runs out",
               "SIGSEGV": " -- a crash in native code (a GPU driver or a library)",
               "SIGABRT": " -- aborted by native code (a GPU driver or a library)"}.get(name, "")
        how = f"was stopped by {name}{why}"
    else:
        how = f"exited with code {returncode} without a result"
    return f"the {what} process {how}. The app is fine. {RESUME_HINT}"


# -- a Session's heavy steps in a child --------------------------------------------------------
def cached_in_session(session, kind: str) -> bool:
    """Whether the workspace's on-disk cache already holds ``kind`` for the session's model."""
    import numpy as np

    from .features import FeatureCache  # torch: the app's process imports this module without it

    key = session.checkpoint_key()
    if kind == "projection":
        if not projection_path(session.ws.cache_dir, key).exists():
            return False
    have = FeatureCache(session.ws.features_dir / key).load()
    return not len(np.setdiff1d(np.asarray(session.images().id, np.int64), have.ids))


def compute_in_child(session, kind: str, *, reporter: Reporter, nice: int = 0) -> bool:
    """Compute ``kind`` ("features" or "projection") of a Session's current model in a child process.

    The child fills the workspace's on-disk caches; the session's own ``features()`` /
    ``projection()`` afterwards only read them.  Holds the session's lock meanwhile, so no thread
    of this process extracts the same features at the same time (they wait and then read the
    cache, as they would wait for an extraction in this process).  Returns ``False`` without
    starting anything when the cache is already complete, or when the workspace cannot be written
    now (opened read-only, or another process writes it: the session computes in memory as before).
    """
    if kind not in ("features", "projection"):
        raise ValueError(f"not a session step: {kind!r}")
    with session._lock:
        # another process writing now (a terminal's itkm train): the child could not take the lock
        if session.ws.readonly or session.ws.other_writer() is not None or cached_in_session(session, kind):
            return False
        run_child(kind, session.ws, {"device": str(session.device)}, cfg=session.cfg, reporter=reporter,
                  nice=nice, what="feature extraction" if kind == "features" else "2-D map")
    return True
