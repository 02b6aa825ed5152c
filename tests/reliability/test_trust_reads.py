"""Trust (issue 16), section 5, the CLI half: listing, reviewing, evaluating and exporting are
reads.  They hold no writer lock, so they work while another process writes the workspace (the
app, a training run) -- they failed with "workspace is being written by pid ..." -- and what they
computed is stored afterwards in one short writer open when that is possible, else they say it
was not.  The holder is a real second process; the reads run the CLI's ``main`` in this one (a
process of their own would add a torch import each and show nothing more: the lock is between
processes either way; the real command beside a holder: test_reliability_faults.py).  (On a read-only mount: tests/reliability/test_reliability_faults.py::test_read_only_workspace_...)"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from helpers.cli import CLI_ENV, REPO, cli_inproc
from helpers.reliability import read_csv

HOLDER = """
import sys, time
from itkm_engine.workspace import Workspace
ws = Workspace.open(sys.argv[1])  # the writer lock, held while idle (what the app does today)
print("holding", flush=True)
time.sleep(600)
"""


def _metrics(ws) -> int:
    con = sqlite3.connect(ws / "itkm.sqlite")
    try:
        return con.execute("SELECT count(*) FROM metrics WHERE key = 'evaluation'").fetchone()[0]
    finally:
        con.close()


def _stored_identities(ws) -> int:
    con = sqlite3.connect(ws / "itkm.sqlite")
    try:
        return con.execute("SELECT count(*) FROM identities").fetchone()[0]
    finally:
        con.close()


def test_reads_work_while_another_process_holds_the_writer_lock(trained_ws, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(trained_ws)], env=CLI_ENV, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"holding", holder.stderr.read()
        pid = holder.pid

        p = cli_inproc("identities", trained_ws, "--json", expect=0)
        rows = json.loads(p.out)
        assert rows and sum(r["sightings"] for r in rows) > 0
        assert f"identities not stored: another process (pid {pid}) is writing" in p.err, p.err

        p = cli_inproc("identities", trained_ws, "--review", "5", "--json", expect=0)
        assert len(json.loads(p.out)) == 5

        p = cli_inproc("evaluate", trained_ws, "--json", expect=0)
        assert "headline" in json.loads(p.out)
        assert "evaluation not stored" in p.err and f"pid {pid}" in p.err, p.err

        out = tmp_path / "tracks.csv"
        cli_inproc("export-tracks", trained_ws, out, expect=0)
        assert len(read_csv(out)) == sum(r["sightings"] for r in rows) + 1

        # A change is still a write: refused, naming the holder.
        p = cli_inproc("identities", trained_ws, "--merge", str(rows[0]["identity"]), str(rows[1]["identity"]))
        assert p.rc == 2 and f"pid {pid}" in p.err, p.err
        assert _metrics(trained_ws) == 0 and _stored_identities(trained_ws) == 0
    finally:
        holder.kill()
        holder.wait(timeout=60)

    # Nobody writes now: what the reads compute is kept, and said nothing about.
    p = cli_inproc("evaluate", trained_ws, expect=0)
    assert "not stored" not in p.err, p.err
    p = cli_inproc("identities", trained_ws, "--json", "--limit", "100000", expect=0)
    assert "not stored" not in p.err, p.err
    assert _metrics(trained_ws) == 1 and _stored_identities(trained_ws) > 0
    # ... the stable ids it answered with (issue 17 / ADR 0013), not the clustering's positions:
    # the ids stored are those listed under the lock, each with its sightings.
    listed = {r["identity"]: r["sightings"] for r in json.loads(p.out)}
    assert {r["identity"]: r["sightings"] for r in rows} == {i: n for i, n in listed.items() if i in
                                                              {r["identity"] for r in rows}}
    assert _stored_ids(trained_ws) == listed
    p = cli_inproc("identities", trained_ws, "--json", "--limit", "100000", expect=0)  # nothing left to store
    assert {r["identity"]: r["sightings"] for r in json.loads(p.out)} == listed
    assert _states(trained_ws) == 1


def _stored_ids(ws) -> dict[int, int]:
    """The stable ids in effect (workspace/identity_store.py): ``{identity: sightings}``."""
    con = sqlite3.connect(ws / "itkm.sqlite")
    try:
        return dict(con.execute("SELECT identity, count(*) FROM identity_ids GROUP BY identity").fetchall())
    finally:
        con.close()


def _states(ws) -> int:
    con = sqlite3.connect(ws / "itkm.sqlite")
    try:
        return con.execute("SELECT count(*) FROM identity_states").fetchone()[0]
    finally:
        con.close()
