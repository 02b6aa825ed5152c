"""The child process of a heavy job: ``python -m itkm_engine.worker`` (the child's side).

Reads one JSON request line from stdin, opens the workspace as its writer, runs the job (a
training round, feature extraction, the UMAP projection) and writes JSON lines of progress
events, log messages and finally the result, an error or "cancelled" to its stdout.  The
protocol and the parent's side are in :mod:`itkm_engine.child_job`; the decision in
``docs/adr/0008-jobs-in-a-child-process.md``.

Stopping: a ``{"type": "cancel"}`` line or SIGTERM sets the job's cancel token (the job stops
within one batch and leaves its round resumable); stdin closing means the parent is gone, which
cancels too.  If the job has not stopped ``EXIT_GRACE_S`` after that, the process exits hard
(the round still resumes from its last completed epoch).

Only the protocol goes to the real stdout: the process's file descriptor 1 is pointed at stderr
before anything else runs, so a library that prints cannot corrupt the channel.

Test hooks (honoured only under pytest, i.e. with ``PYTEST_CURRENT_TEST`` set):
``ITKM_WORKER_FAULT=KIND@STAGE`` makes the job fail at its first progress event of ``STAGE``
(``*`` for any) as ``oom`` (MemoryError), ``cuda`` (a CUDA RuntimeError), ``abort`` (SIGABRT, a
native crash) or ``kill`` (SIGKILL, the kernel's out-of-memory killer); and the ``test-count``
job kind counts without torch (for protocol and cancel tests).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

from .child_job import dumps, event_to_json
from .config import Config
from .errors import Cancelled, ItkmError
from .progress import CancelToken, LogMessage, ProgressEvent, Reporter
from .train_request import TrainRequest, check_request, run_training
from .workspace import Workspace

#: After a cancel by SIGTERM or by the parent going away, exit hard if the job has not stopped.
EXIT_GRACE_S = 60.0


class Channel:
    """The protocol stream: one JSON object per line, from any thread; never raises."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.broken = False

    def send(self, line: str) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                self.broken = True  # the parent is gone; the stdin watcher cancels the job


def under_tests() -> bool:
    return "PYTEST_CURRENT_TEST" in os.environ


# -- jobs ------------------------------------------------------------------------------------------
def _limit_threads(device: str) -> None:
    """Leave one core to the window on a small CPU (the GUI process needs one to stay responsive)."""
    import torch

    cores = os.cpu_count() or 1
    if 1 < cores <= 4 and str(device) in ("cpu", "auto") and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)


def job_train(ws, cfg, params: dict, reporter: Reporter) -> list[dict]:
    """Training rounds through the one entry point (``train_request.run_training``), exactly as
    ``itkm train`` runs them: ``params["request"]`` is a :class:`TrainRequest` (what the user
    chose in the app: a preset only when they changed it, a device, rounds).  Its settings are
    resolved against the workspace's config.toml, checked, the lineage too, before anything is
    written; ``cfg`` (the app's session settings) plays no part."""
    req = TrainRequest.from_json(params.get("request") or {})
    check_request(req)  # refused before torch loads
    _limit_threads(req.device or "auto")
    results = run_training(ws, req, reporter=reporter)
    return [{"round": r.round, "checkpoint": str(r.checkpoint), "seconds": r.seconds, "epochs": r.epochs}
            for r in results]


def _session(ws, cfg, params: dict):
    from .session import Session  # torch (see job_train)

    device = params.get("device") or "auto"
    _limit_threads(device)
    return Session(ws, cfg, device=device)


def job_features(ws, cfg, params: dict, reporter: Reporter) -> dict:
    session = _session(ws, cfg, params)
    fs = session.features(reporter=reporter)
    return {"images": len(fs.ids), "checkpoint": session.checkpoint_key()}


def job_projection(ws, cfg, params: dict, reporter: Reporter) -> dict:
    session = _session(ws, cfg, params)
    xy = session.projection(reporter=reporter)
    return {"points": int(len(xy)), "checkpoint": session.checkpoint_key()}


def job_test_count(ws, cfg, params: dict, reporter: Reporter) -> int:
    """Test only: ``n`` events ``sleep_s`` apart; ``ignore_cancel`` / ``ignore_term`` to test escalation."""
    if params.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    n = int(params.get("n", 10))
    reporter.log(f"counting to {n}")
    print("a line on stdout that must not break the protocol", flush=True)
    for i in range(n):
        if not params.get("ignore_cancel"):
            reporter.check()
        reporter.update((i + 1) / n, stage="count", step=i + 1, steps=n, losses={"loss": 1.0 / (i + 1)})
        time.sleep(float(params.get("sleep_s", 0.01)))
    return n


JOBS: dict[str, Callable[..., Any]] = {"train": job_train, "features": job_features, "projection": job_projection}
TEST_JOBS: dict[str, Callable[..., Any]] = {"test-count": job_test_count}


# -- the test fault hook ---------------------------------------------------------------------------
def _fault_hook() -> Callable[[ProgressEvent], None] | None:
    spec = os.environ.get("ITKM_WORKER_FAULT", "")
    if not spec or not under_tests():
        return None
    kind, _, stage = spec.partition("@")
    stage = stage or "*"

    def hook(event: ProgressEvent) -> None:
        if stage != "*" and event.stage != stage:
            return
        print(f"test fault {kind} at stage {event.stage!r}", file=sys.stderr, flush=True)
        if kind == "oom":
            raise MemoryError("test fault: could not allocate 8589934592 bytes")
        if kind == "cuda":
            raise RuntimeError("CUDA error: an illegal memory access was encountered (test fault)")
        if kind == "abort":
            os.abort()
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


# -- main ------------------------------------------------------------------------------------------
def _exit_later(seconds: float) -> None:
    def run() -> None:
        time.sleep(seconds)
        os._exit(3)

    threading.Thread(target=run, daemon=True, name="itkm-worker-exit").start()


def _watch_stdin(token: CancelToken) -> None:
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("type") == "cancel":
            token.cancel()
    token.cancel()  # stdin closed: the parent is gone
    _exit_later(EXIT_GRACE_S)


def run(request: dict, reporter: Reporter) -> Any:
    kind = request.get("kind")
    job = JOBS.get(kind) or (TEST_JOBS.get(kind) if under_tests() else None)
    if job is None:
        raise ItkmError(f"unknown job kind {kind!r} for the worker process (a newer ITKM Studio started it?)")
    cfg = Config.from_toml(request["config"]) if request.get("config") else None
    if job in TEST_JOBS.values():
        return job(None, cfg, request.get("params") or {}, reporter)
    from .session import workspace_config  # torch (see job_train)

    with Workspace.open(request["workspace"], reporter=reporter, owner=request.get("owner")) as ws:
        return job(ws, cfg or workspace_config(ws), request.get("params") or {}, reporter)


def main() -> int:
    # the protocol gets a private copy of stdout; fd 1 (and print) goes to stderr from now on
    channel = Channel(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the parent went away before asking anything
    request = json.loads(line)
    if int(request.get("nice") or 0) > 0 and hasattr(os, "nice"):
        os.nice(int(request["nice"]))  # before any thread starts: torch's threads inherit it
    token = CancelToken()

    def on_term(_sig, _frame) -> None:
        token.cancel()
        _exit_later(EXIT_GRACE_S)

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=_watch_stdin, args=(token,), daemon=True, name="itkm-worker-stdin").start()
    fault = _fault_hook()

    def on_event(event: ProgressEvent) -> None:
        if fault is not None:
            fault(event)
        channel.send(event_to_json(event))

    def on_log(message: LogMessage) -> None:
        channel.send(dumps({"type": "log", "level": message.level, "text": message.text, "time": message.time}))

    reporter = Reporter(on_event, on_log, token, job=str(request.get("kind", "job")))
    try:
        value = run(request, reporter)
    except Cancelled:
        channel.send(dumps({"type": "cancelled"}))
    except ItkmError as exc:
        channel.send(dumps({"type": "error", "error": type(exc).__name__, "user": True, "message": str(exc),
                            "traceback": traceback.format_exc()}))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which shows it
        channel.send(dumps({"type": "error", "error": type(exc).__name__, "user": False,
                            "message": str(exc) or type(exc).__name__, "traceback": traceback.format_exc()}))
    else:
        channel.send(dumps({"type": "result", "value": value}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
