"""A workspace opened with ``hold_lock=False`` (the app) reads without the writer lock and takes it
for each write (issue 16, section 5; docs/adr/0012)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from itkm_engine.errors import ReadOnlyWorkspaceError, WorkspaceLockedError
from itkm_engine.workspace import Workspace

HOLD = ("import sys, time; from itkm_engine.workspace import Workspace; ws = Workspace.open(sys.argv[1]); "
        "print('held', flush=True); time.sleep(60)")


def _holder(path):
    """Another process holding the writer lock (like a terminal's itkm train)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert p.stdout.readline().strip() == "held"
    return p


def test_each_write_takes_the_lock_and_gives_it_back(fresh_ws):
    ws = Workspace.open(fresh_ws, hold_lock=False, owner="itkm-app")
    try:
        lock = fresh_ws / "workspace.lock"
        assert not ws.readonly and ws.lock_on_demand and not lock.exists()
        cam = ws.cameras()[0].name
        ws.set_camera(cam, scenario="cross-camera", group="all")  # one transaction: a turn of its own
        assert not lock.exists() and ws.writes_done == 1
        with ws.writing("adding camera folders"):
            info = ws.writer_info()
            assert info.pid == os.getpid() and info.what() == "itkm-app: adding camera folders" and info.brief
            with ws.writing():  # nested: the same turn
                ws.set_meta("x", 1)
            assert lock.exists()
        assert not lock.exists() and ws.writes_done == 2
        assert ws.get_meta("x") == "1" and ws.cameras()[0].scenario == "cross-camera"
    finally:
        ws.close()


def test_a_write_while_another_process_writes_is_refused_naming_it(fresh_ws):
    ws = Workspace.open(fresh_ws, hold_lock=False, owner="itkm-app")
    holder = _holder(fresh_ws)
    try:
        assert ws.other_writer() is not None and ws.other_writer().pid == holder.pid
        with pytest.raises(WorkspaceLockedError, match=f"pid {holder.pid}"):
            ws.set_meta("x", 1)
        with ws.writing_if_free() as ok:
            assert ok is False  # a read keeps what it computed in memory
        assert ws.get_meta("x") is None and len(ws.images()) > 0  # reads go on
        # the app opened while the other process writes: it reads, and its writes wait their turn
        late = Workspace.open(fresh_ws, hold_lock=False)
        try:
            assert len(late.cameras()) == len(ws.cameras())
            with pytest.raises(WorkspaceLockedError):
                late.set_meta("y", 1)
        finally:
            late.close()
    finally:
        holder.kill()
        holder.wait()
    ws.set_meta("x", 2)  # the dead holder's lock is stale: taken over
    assert ws.get_meta("x") == "2"
    ws.close()


def test_lending_to_a_child_waits_for_a_write_in_progress(fresh_ws):
    """The training child must not start while another thread of the app writes (it could not
    take the lock); meanwhile the app is read-only, as with a held lock."""
    ws = Workspace.open(fresh_ws, hold_lock=False)
    entered, order = threading.Event(), []

    def write():
        with ws.writing("a long write"):
            entered.set()
            time.sleep(0.3)
            order.append("write done")

    t = threading.Thread(target=write)
    t.start()
    entered.wait(10)
    with ws.lend_writer():
        order.append("lent")
        assert ws.readonly and not (fresh_ws / "workspace.lock").exists()
        with pytest.raises(ReadOnlyWorkspaceError):
            ws.set_meta("x", 1)
    t.join()
    assert order == ["write done", "lent"] and not ws.readonly
    ws.set_meta("x", 1)
    ws.close()
