"""The stable identity ids' store: the assignment in effect, its undo stack and the lineage log.

Schema v4 tables (:mod:`itkm_engine.workspace.schema`); every function takes the
:class:`~itkm_engine.workspace.Workspace`.  The matching that decides the ids is
:mod:`itkm_engine.identity_ids`; :meth:`Session.identities <itkm_engine.session.Session.identities>`
calls :func:`settle` with the *key* of what it computed -- the model, the active decision steps,
the images -- and a function that computes a new assignment:

* the key of the assignment in effect: it is returned as it is;
* the key of an earlier assignment still on the stack (an undo went back to it): the states above
  it are undone (``state=1``) and their changes reverted, so undo restores the ids that step had;
* the key of an undone state (a redo): it is applied again;
* anything else: the undone states are dropped (``state=2``, never redone, kept for the record),
  the new assignment is matched against the one in effect and published with its changes and
  lineage (new / merged into / split from / retired into, with the decision step or round).

A read-only workspace gets the same answer computed in memory; nothing is written.  Ids are never
reused: the next id is one past every id the lineage ever recorded, undone or dropped states
included.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..identity_ids import LineageEvent
from ..records import rows_of
from .connection import _parse_ints

__all__ = ["Lineage", "state_key", "active_batches", "current", "settle", "lineage", "fate", "history_notes",
           "split_offs", "record_split_offs", "identity_count", "head_key"]


@dataclass(frozen=True)
class Lineage:
    identity: int
    event: str  # new / merged / split / retired (itkm_engine.identity_ids.EVENTS)
    other: int | None  # merged into / split from / retired into
    batch: int | None  # the decision step that caused it (None: a round or the first listing)
    round: int | None  # the latest finished round at that time
    at: float
    state: int  # 0 in effect, 1 undone, 2 dropped


def state_key(checkpoint: str | None, batches: Iterable[int], image_ids) -> str:
    """What an assignment was computed for: the model, the active decision steps, the images."""
    h = hashlib.sha1()
    h.update(str(checkpoint).encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update(np.asarray(sorted(int(b) for b in batches), np.int64).tobytes())
    h.update(b"\0")
    h.update(np.ascontiguousarray(np.asarray(image_ids, np.int64)).tobytes())
    return h.hexdigest()


def active_batches(ws) -> tuple[int, ...]:
    """The decision steps in effect (``decisions.state = 0``)."""
    return tuple(int(b) for (b,) in ws.query("SELECT DISTINCT batch FROM decisions WHERE state = 0 ORDER BY batch"))


def current(ws) -> tuple[np.ndarray, np.ndarray]:
    """``(image_ids, identity_ids)`` in effect, sorted by image id (empty before the first listing)."""
    ((n, a, b),) = ws.query("SELECT count(*), group_concat(image_id), group_concat(identity) FROM "
                            "(SELECT image_id, identity FROM identity_ids ORDER BY image_id)")
    return _parse_ints(a, n), _parse_ints(b, n)


def identity_count(ws) -> tuple[int, int | None, str | None]:
    """``(identities in effect, the round they were computed after, their model)`` without loading
    anything: what ``itkm status`` shows."""
    ((n,),) = ws.query("SELECT COUNT(DISTINCT identity) FROM identity_ids")
    row = ws.query("SELECT round, checkpoint FROM identity_states WHERE state = 0 ORDER BY id DESC LIMIT 1")
    return int(n), (row[0][0] if row else None), (row[0][1] if row else None)


def head_key(ws) -> str | None:
    """The key (:func:`state_key`) of the assignment in effect; ``None`` before the first listing."""
    row = ws.query("SELECT key FROM identity_states WHERE state = 0 ORDER BY id DESC LIMIT 1")
    return row[0][0] if row else None


def _changes(ws, state_ids: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not state_ids:
        z = np.zeros(0, np.int64)
        return z, z, z
    q = ",".join("?" * len(state_ids))
    ((n, a, b, c),) = ws.query(
        "SELECT count(*), group_concat(image_id), group_concat(before), group_concat(after) FROM "
        f"(SELECT image_id, before, after FROM identity_changes WHERE state_id IN ({q}))", state_ids)
    return _parse_ints(a, n), _parse_ints(b, n), _parse_ints(c, n)


def _apply(ids: np.ndarray, ident: np.ndarray, ch_ids: np.ndarray, ch_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ids -> ident`` with ``ch_ids -> ch_to`` set (-1 removes the image)."""
    if not len(ch_ids):
        return ids, ident
    every = np.union1d(ids, ch_ids)
    vals = np.full(len(every), -1, np.int64)
    vals[rows_of(every, ids)] = ident
    vals[rows_of(every, ch_ids)] = ch_to
    keep = vals >= 0
    return every[keep], vals[keep]


def _diff(a_ids, a_val, b_ids, b_val) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images whose id differs between two assignments: ``(image_ids, before, after)``, -1 = none."""
    every = np.union1d(a_ids, b_ids)
    before = np.full(len(every), -1, np.int64)
    after = before.copy()
    before[rows_of(every, a_ids)] = a_val
    after[rows_of(every, b_ids)] = b_val
    ch = before != after
    return every[ch], before[ch], after[ch]


def _next_id(ws) -> int:
    ((a,),) = ws.query("SELECT MAX(identity) FROM identity_lineage")
    ((b,),) = ws.query("SELECT MAX(identity) FROM identity_ids")
    return max(int(a or 0), int(b or 0)) + 1


def settle(ws, key: str, *, checkpoint: str | None, batch: int | None, round: int | None,
           compute: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray, list[LineageEvent]]],
           check: Callable[[np.ndarray, np.ndarray], bool] | None = None,
           write: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The assignment ``(image_ids, identity_ids)`` for ``key`` (module docstring).  ``compute(prev_ids,
    prev_identity, next_id)`` returns ``(image_ids, identity_ids, lineage events)`` for a new state;
    ``check(image_ids, identity_ids)`` says whether a stored assignment still fits what the caller
    computed (it does unless the clustering under it was computed again): one that does not is
    matched like a new one.  ``write=False``: computed in memory, nothing stored (default: unless
    the workspace is read-only)."""
    writer = (not ws.readonly) if write is None else bool(write)
    with (ws.transaction() if writer else contextlib.nullcontext()) as con:
        ids, ident = current(ws)
        states = ws.query("SELECT id, key, state FROM identity_states WHERE state IN (0, 1) ORDER BY id")
        active = [(int(i), k) for i, k, s in states if s == 0]
        undone = [(int(i), k) for i, k, s in states if s == 1]
        if active and active[-1][1] == key and (check is None or check(ids, ident)):
            return ids, ident
        back = next((n for n, (_i, k) in enumerate(active[:-1]) if k == key), None)
        if back is not None:  # an undo went back to an earlier assignment: revert what came after
            for sid, _k in reversed(active[back + 1:]):
                ch_ids, before, _after = _changes(ws, [sid])
                ids, ident = _apply(ids, ident, ch_ids, before)
                if writer:
                    _write(con, ch_ids, before)
            if writer:
                q = ",".join("?" * len(active[back + 1:]))
                _exec(con, f"UPDATE identity_states SET state = 1 WHERE id IN ({q})", [s for s, _ in active[back + 1:]])
            if check is None or check(ids, ident):
                return ids, ident
        fwd = next((n for n, (_i, k) in enumerate(undone) if k == key), None) if back is None else None
        if fwd is not None:  # a redo: the undone states up to that one again
            for sid, _k in undone[: fwd + 1]:
                ch_ids, _before, after = _changes(ws, [sid])
                ids, ident = _apply(ids, ident, ch_ids, after)
                if writer:
                    _write(con, ch_ids, after)
            if writer:
                q = ",".join("?" * (fwd + 1))
                _exec(con, f"UPDATE identity_states SET state = 0 WHERE id IN ({q})", [s for s, _ in undone[: fwd + 1]])
            if check is None or check(ids, ident):
                return ids, ident
        new_ids, new_ident, events = compute(ids, ident, _next_id(ws))
        order = np.argsort(new_ids, kind="stable")
        new_ids, new_ident = np.asarray(new_ids, np.int64)[order], np.asarray(new_ident, np.int64)[order]
        if writer:
            _exec(con, "UPDATE identity_states SET state = 2 WHERE state = 1", ())
            sid = _exec(con, "INSERT INTO identity_states (key, checkpoint, batch, round, at, state) "
                              "VALUES (?, ?, ?, ?, ?, 0)", (key, checkpoint, batch, round, time.time()))
            ch_ids, before, after = _diff(ids, ident, new_ids, new_ident)
            con.executemany("INSERT INTO identity_changes (state_id, image_id, before, after) VALUES (?, ?, ?, ?)",
                            zip([sid] * len(ch_ids), ch_ids.tolist(), before.tolist(), after.tolist()))
            _write(con, ch_ids, after)
            con.executemany("INSERT INTO identity_lineage (state_id, identity, event, other) VALUES (?, ?, ?, ?)",
                            [(sid, e.identity, e.event, e.other) for e in events])
        return new_ids, new_ident


def _exec(con, sql: str, params) -> int:
    """One statement inside the open transaction; returns ``lastrowid``."""
    return int(con.execute(sql, params).lastrowid or 0)


def _write(con, ch_ids: np.ndarray, to: np.ndarray) -> None:
    gone = to < 0
    con.executemany("DELETE FROM identity_ids WHERE image_id = ?", [(i,) for i in ch_ids[gone].tolist()])
    con.executemany("INSERT INTO identity_ids (image_id, identity) VALUES (?, ?) ON CONFLICT (image_id) "
                    "DO UPDATE SET identity = excluded.identity", zip(ch_ids[~gone].tolist(), to[~gone].tolist()))


def lineage(ws, identity: int | None = None, *, include_undone: bool = False) -> list[Lineage]:
    """The lineage log (oldest first): every event, or those naming ``identity`` (either side)."""
    sql = ("SELECT l.identity, l.event, l.other, s.batch, s.round, s.at, s.state FROM identity_lineage l "
           "JOIN identity_states s ON s.id = l.state_id")
    where, params = [], []
    if not include_undone:
        where.append("s.state = 0")
    if identity is not None:
        where.append("(l.identity = ? OR l.other = ?)")
        params += [int(identity), int(identity)]
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [Lineage(int(i), e, None if o is None else int(o), None if b is None else int(b),
                    None if r is None else int(r), float(t), int(st))
            for i, e, o, b, r, t, st in ws.query(sql + " ORDER BY l.id", params)]


def fate(ws, identity: int) -> tuple[Lineage, int | None] | None:
    """What became of an id that no longer names any sighting: its last retiring event (merged /
    retired) and the id that now holds its sightings, following later merges (``None`` when they
    are in no identity).  ``None`` when the id never existed."""
    ident = int(identity)
    seen = {ident}
    last = None
    into: int | None = ident
    live = {int(i) for (i,) in ws.query("SELECT DISTINCT identity FROM identity_ids")}
    while into is not None and into not in live:
        ev = [e for e in lineage(ws, into) if e.identity == into and e.event in ("merged", "retired")]
        if not ev:
            break
        if last is None:
            last = ev[-1]
        into = ev[-1].other
        if into in seen:
            break
        seen.add(into)
    if last is None:
        return None
    return last, (into if into in live else None)


def history_notes(ws, identities: Iterable[int] | None = None, limit: int = 3) -> dict[int, str]:
    """A short note per live identity from the lineage in effect: ``merged #40, #41`` (ids merged
    into it), ``split from #3``.  What the listing, the CSV's lineage and the app show beside an id."""
    want = None if identities is None else {int(i) for i in identities}
    merged: dict[int, list[int]] = {}
    split: dict[int, int] = {}
    for e in lineage(ws):
        if e.event == "merged" and e.other is not None:
            merged.setdefault(e.other, []).append(e.identity)
        elif e.event == "split" and e.other is not None:
            split[e.identity] = e.other
    out: dict[int, str] = {}
    for i in set(merged) | set(split):
        if want is not None and i not in want:
            continue
        parts = []
        if i in merged:
            m = sorted(set(merged[i]))
            parts.append("merged " + ", ".join(f"#{x}" for x in m[:limit]) + (f" +{len(m) - limit}" if len(m) > limit else ""))
        if i in split:
            parts.append(f"split from #{split[i]}")
        out[i] = "; ".join(parts)
    return out


def record_split_offs(ws, batch: int, image_ids) -> None:
    """Sightings a split step took off one by one (nobody said they are one person)."""
    with ws.transaction() as con:
        con.executemany("INSERT OR IGNORE INTO identity_split_offs (batch, image_id) VALUES (?, ?)",
                        [(int(batch), int(i)) for i in np.unique(np.asarray(image_ids, np.int64))])


def split_offs(ws) -> list[np.ndarray]:
    """Per split step in effect (its decisions active), the sightings it took off one by one."""
    rows = ws.query("SELECT o.batch, o.image_id FROM identity_split_offs o WHERE EXISTS "
                    "(SELECT 1 FROM decisions d WHERE d.batch = o.batch AND d.state = 0) ORDER BY o.batch, o.image_id")
    out: dict[int, list[int]] = {}
    for b, i in rows:
        out.setdefault(int(b), []).append(int(i))
    return [np.array(v, np.int64) for v in out.values()]
