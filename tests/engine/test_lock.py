"""Writer lock: one writer per workspace across processes, stale locks taken over, clear messages."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from itkm_engine.errors import WorkspaceError, WorkspaceLockedError
from itkm_engine.lock import LOCK_NAME, WriterLock, pid_alive, read_lock_info
from itkm_engine.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from itkm_engine.workspace import Workspace
    ws = Workspace.open({path!r}, create=True)
    print("ready", flush=True)
    sys.stdin.readline()
    {finish}
    """
)


def start_holder(path: Path, finish: str = "ws.close()") -> subprocess.Popen:
    code = HOLDER.format(repo=str(REPO), path=str(path), finish=finish)
    p = subprocess.Popen(
        [sys.executable, "-c", code, "train", "--rounds", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        raise AssertionError(f"holder did not start: {line!r} {p.stderr.read()}")
    return p


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not pid_alive(p.pid)
    return p.pid


def write_lock(path: Path, pid: int, host: str | None = None, started: float | None = None) -> None:
    path.write_text(json.dumps({
        "pid": pid, "host": host or socket.gethostname(), "started": started or time.time(),
        "argv": ["/usr/bin/itkm", "train"],
    }))


def test_second_writer_in_other_process_is_refused_with_holder_pid(tmp_path):
    path = tmp_path / "ws"
    holder = start_holder(path)
    try:
        with pytest.raises(WorkspaceLockedError) as err:
            Workspace.open(path)
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and "train --rounds 2" in msg and "read-only" in msg
        assert err.value.holder.pid == holder.pid
        # read-only is fine meanwhile
        with Workspace.open(path, readonly=True) as ro:
            assert ro.image_count() == 0
            assert ro.writer_info().pid == holder.pid
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert not (path / LOCK_NAME).exists()
    with Workspace.open(path) as w:  # free again
        assert not w.readonly


def test_kill_9_leaves_a_stale_lock_that_is_taken_over(tmp_path):
    path = tmp_path / "ws"
    holder = start_holder(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    holder.stdin.close(); holder.stdout.close(); holder.stderr.close()
    assert (path / LOCK_NAME).exists()
    warnings = []
    from itkm_engine.progress import Reporter

    with Workspace.open(path, reporter=Reporter(on_log=warnings.append)) as w:
        assert w.writer_info().pid == os.getpid()
    assert any("stale" in m.text and str(holder.pid) in m.text for m in warnings)


def test_exit_without_close_releases_lock(tmp_path):
    path = tmp_path / "ws"
    holder = start_holder(path, finish="pass  # no close: atexit releases")
    holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert not (path / LOCK_NAME).exists()


def test_stale_lock_of_dead_pid_taken_over(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    pid = dead_pid()
    write_lock(lock_file, pid)
    msgs = []
    lk = WriterLock(lock_file, on_message=msgs.append).acquire()
    try:
        assert lk.took_over.pid == pid
        assert read_lock_info(lock_file).pid == os.getpid()
        assert msgs and f"pid {pid}" in msgs[0] and "gone" in msgs[0]
    finally:
        lk.release()
    assert not lock_file.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="flock guard is POSIX")
def test_recycled_pid_without_flock_is_stale(tmp_path):
    # The file names a live pid (our parent) that holds no flock: the real holder died and its pid
    # was reused; the flock the holder would keep is free, so the lock is stale.
    lock_file = tmp_path / LOCK_NAME
    write_lock(lock_file, os.getppid())
    msgs = []
    with WriterLock(lock_file, on_message=msgs.append) as lk:
        assert lk.held and "another program" in msgs[0]


def test_same_process_second_writer_refused(tmp_path):
    path = tmp_path / "ws"
    with Workspace.open(path, create=True):
        with pytest.raises(WorkspaceLockedError, match="this process"):
            Workspace.open(path)
    Workspace.open(path).close()


def test_other_host_refused_with_advice(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    write_lock(lock_file, 4242, host="render-node-7", started=time.time() - 86400 * 3)
    with pytest.raises(WorkspaceLockedError) as err:
        WriterLock(lock_file).acquire()
    msg = str(err.value)
    assert "render-node-7" in msg and "delete" in msg and str(lock_file) in msg
    assert lock_file.exists()


def test_garbled_lock_file(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    lock_file.write_bytes(b"")
    old = time.time() - 60
    os.utime(lock_file, (old, old))  # a crash between create and write, long ago
    with WriterLock(lock_file) as lk:
        assert lk.held and read_lock_info(lock_file).pid == os.getpid()


def test_release_is_idempotent_and_only_removes_own_file(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    lk = WriterLock(lock_file).acquire()
    assert lk.acquire() is lk  # re-acquire while held: no-op
    os.unlink(lock_file)
    write_lock(lock_file, 1234, host="elsewhere")  # someone replaced it meanwhile
    lk.release()
    lk.release()
    assert read_lock_info(lock_file).host == "elsewhere"


def test_lock_message_format(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    lk = WriterLock(lock_file, argv=["/opt/bin/itkm", "train", "--preset", "quick"]).acquire()
    try:
        with pytest.raises(WorkspaceLockedError) as err:
            WriterLock(lock_file).acquire()
        assert f"pid {os.getpid()}" in str(err.value)
        assert lk.info.command() == "itkm train --preset quick"
        assert len(lk.info.since()) == 5  # HH:MM today
    finally:
        lk.release()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_folder(tmp_path):
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(WorkspaceError, match="read-only"):
            WriterLock(tmp_path / LOCK_NAME).acquire()
    finally:
        os.chmod(tmp_path, 0o755)


def test_kill_9_mid_transaction_keeps_committed_rows_only(tmp_path):
    """A writer killed inside a transaction: reopening recovers the WAL; nothing half-written."""
    path = tmp_path / "ws"
    finish = textwrap.dedent(
        """
        from itkm_engine.records import ImageRecord
        sid = ws.add_source({root!r}, "camera-folders")
        ws.upsert_images(sid, [ImageRecord(f"c/{{i}}.jpg", "c", 1, 1, 0.0, 0.0, 1) for i in range(100)])
        tx = ws.transaction()  # kept referenced: a collected one would roll back
        con = tx.__enter__()
        con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [(f"k{{i}}", "v") for i in range(1000)])
        print("in-transaction", flush=True)
        import time; time.sleep(60)
        """
    ).format(root=str(tmp_path))
    code = HOLDER.format(repo=str(REPO), path=str(path), finish="").replace(
        "sys.stdin.readline()", "sys.stdin.readline()\n" + finish
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.stdin.write("\n"); p.stdin.flush()
        line = p.stdout.readline().strip()
        assert line == "in-transaction", p.stderr.read()
    finally:
        p.kill()
        p.wait(timeout=30)
        for f in (p.stdin, p.stdout, p.stderr):
            f.close()
    with Workspace.open(path) as w:
        assert w.image_count() == 100
        assert w.get_meta("k5") is None
        assert w._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _race(lock_file: str, barrier, results) -> None:
    barrier.wait()
    try:
        lk = WriterLock(lock_file).acquire()
    except WorkspaceLockedError:
        results.put("refused")
        barrier.wait()
        return
    results.put("won")
    barrier.wait()  # hold it until everyone has tried
    lk.release()


@pytest.mark.skipif(sys.platform == "win32", reason="fork start method")
def test_racing_takeover_of_a_stale_lock_has_one_winner(tmp_path):
    import multiprocessing as mp

    lock_file = tmp_path / LOCK_NAME
    write_lock(lock_file, dead_pid())
    ctx = mp.get_context("fork")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(lock_file), barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in range(n))
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["refused"] * (n - 1) + ["won"]
    assert not lock_file.exists()
