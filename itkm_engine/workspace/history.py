"""What training did: rounds, epochs, pseudo-label assignments, metrics, final identities.

A part of :class:`~itkm_engine.workspace.Workspace` (:class:`HistoryMixin`).  Values dicts are
stored as JSON (numpy scalars and arrays allowed; NaN/inf kept).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ItkmError
from ..records import ROUND_STATUSES, IdentityTable, RoundInfo
from .connection import _parse_ints

__all__ = ["HistoryMixin"]


def _json_default(obj: Any) -> Any:
    """Let values dicts carry numpy scalars/arrays and tensors' ``.item()`` results."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(values: dict) -> str:
    if not isinstance(values, dict):
        raise TypeError(f"values must be a dict, got {type(values).__name__}")
    # NaN/inf (a diverged loss) are kept: Python's json writes and reads them back.
    return json.dumps(values, default=_json_default, sort_keys=True)


class HistoryMixin:
    """Rounds, epochs, assignments, metrics and identities of a workspace."""

    # -- rounds & epochs ---------------------------------------------------------------------
    def start_round(self, config_json: str, base_checkpoint: str | Path | None) -> int:
        """Record a new running round; returns its number (1, 2, ...)."""
        if not isinstance(config_json, str):
            raise TypeError("config_json must be a JSON string")
        try:
            json.loads(config_json)
        except ValueError as exc:
            raise ItkmError(f"the round's configuration is not valid JSON: {exc}") from exc
        with self.transaction() as con:
            (number,) = con.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM rounds").fetchone()
            con.execute(
                "INSERT INTO rounds (number, status, config_json, base_checkpoint, started) VALUES (?, 'running', ?, ?, ?)",
                (number, config_json, self._store_path(base_checkpoint), time.time()),
            )
        return int(number)

    _ROUND_COLS = "number, status, started, finished, checkpoint, stage, epoch, config_json, base_checkpoint"

    def _round(self, row: tuple) -> RoundInfo:
        number, status, started, finished, ckpt, stage, epoch, cfg, base = row
        return RoundInfo(
            number=int(number), status=status, started=float(started),
            finished=None if finished is None else float(finished),
            checkpoint=None if ckpt is None else str(self.resolve_path(ckpt)), stage=stage,
            epoch=None if epoch is None else int(epoch), config_json=cfg,
            base_checkpoint=None if base is None else str(self.resolve_path(base)),
        )

    def rounds(self) -> list[RoundInfo]:
        return [self._round(r) for r in self.query(f"SELECT {self._ROUND_COLS} FROM rounds ORDER BY number")]

    def get_round(self, number: int) -> RoundInfo:
        rows = self.query(f"SELECT {self._ROUND_COLS} FROM rounds WHERE number = ?", (int(number),))
        if not rows:
            raise ItkmError(f"no round {number} in this workspace")
        return self._round(rows[0])

    _ROUND_FIELDS = frozenset({"status", "stage", "epoch", "checkpoint", "finished", "base_checkpoint", "config_json"})

    def update_round(self, number: int, **fields: Any) -> None:
        """Update a round's ``status``/``stage``/``epoch``/``checkpoint``/``finished``.

        A final status (done/cancelled/failed) sets ``finished`` to now unless given; ``running``
        clears it (a resumed round).  Checkpoint paths inside the workspace are stored relative
        to it, so the workspace can be moved.
        """
        unknown = set(fields) - self._ROUND_FIELDS
        if unknown:
            raise TypeError(f"update_round() got unknown field(s): {', '.join(sorted(unknown))}")
        if not fields:
            return
        if "status" in fields:
            if fields["status"] not in ROUND_STATUSES:
                raise ItkmError(f"unknown round status {fields['status']!r}; one of {', '.join(ROUND_STATUSES)}")
            if "finished" not in fields:
                fields["finished"] = None if fields["status"] == "running" else time.time()
        for key in ("checkpoint", "base_checkpoint"):
            if key in fields:
                fields[key] = self._store_path(fields[key])
        if "epoch" in fields and fields["epoch"] is not None:
            fields["epoch"] = int(fields["epoch"])
        cols = sorted(fields)
        with self.transaction() as con:
            n = con.execute(
                f"UPDATE rounds SET {', '.join(c + ' = ?' for c in cols)} WHERE number = ?",
                [fields[c] for c in cols] + [int(number)],
            ).rowcount
            if n == 0:
                raise ItkmError(f"no round {number} in this workspace")

    def log_epoch(self, round: int, stage: str, epoch: int, values: dict) -> None:
        """Record (or replace) one epoch's losses and counts; a resumed epoch overwrites its row."""
        with self.transaction() as con:
            con.execute(
                "INSERT INTO epochs (round, stage, epoch, values_json, finished) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (round, stage, epoch) DO UPDATE SET values_json = excluded.values_json, "
                "finished = excluded.finished",
                (int(round), str(stage), int(epoch), _dumps(values), time.time()),
            )

    def epoch_log(self, round: int | None = None) -> list[dict]:
        """Epoch rows ``{"round", "stage", "epoch", "finished", "values": {...}}`` in the order logged."""
        sql = "SELECT round, stage, epoch, finished, values_json FROM epochs"
        params: tuple = ()
        if round is not None:
            sql += " WHERE round = ?"
            params = (int(round),)
        sql += " ORDER BY round, rowid"
        return [
            {"round": r, "stage": s, "epoch": e, "finished": f, "values": json.loads(v)}
            for r, s, e, f, v in self.query(sql, params)
        ]

    # -- assignments, metrics, identities ----------------------------------------------------
    def save_assignments(self, round: int, image_ids: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> None:
        """The round's pseudo-labels (``-1`` = outlier); replaces what the round had."""
        ids = np.asarray(image_ids, dtype=np.int64).ravel()
        lab = np.asarray(labels, dtype=np.int64).ravel()
        if ids.shape != lab.shape:
            raise ValueError(f"{len(ids)} image ids but {len(lab)} labels")
        rnd = int(round)
        with self.transaction() as con:
            con.execute("DELETE FROM assignments WHERE round = ?", (rnd,))
            con.executemany(
                "INSERT INTO assignments (round, image_id, label) VALUES (?, ?, ?)",
                zip([rnd] * len(ids), ids.tolist(), lab.tolist()),
            )

    def assignments(self, round: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image_ids, labels)`` of the round, sorted by image id (empty arrays when none)."""
        ((n, ids, labels),) = self.query(
            "SELECT count(*), group_concat(image_id), group_concat(label) FROM "
            "(SELECT image_id, label FROM assignments WHERE round = ? ORDER BY image_id)",
            (int(round),),
        )
        ids_a, labels_a = _parse_ints(ids, n), _parse_ints(labels, n)
        if n > 1 and not bool(np.all(ids_a[1:] > ids_a[:-1])):
            order = np.argsort(ids_a, kind="stable")
            ids_a, labels_a = ids_a[order], labels_a[order]
        return ids_a, labels_a

    def save_metrics(self, key: str, round: int | None, checkpoint: str | Path | None, values: dict) -> int:
        """Append one metrics record (e.g. key ``"rank/visible-infrared"``); returns its id."""
        with self.transaction() as con:
            cur = con.execute(
                "INSERT INTO metrics (key, round, checkpoint, values_json, created) VALUES (?, ?, ?, ?, ?)",
                (str(key), None if round is None else int(round), None if checkpoint is None else str(checkpoint),
                 _dumps(values), time.time()),
            )
            return int(cur.lastrowid)

    def metrics(self, key: str | None = None) -> list[dict]:
        """Metrics records ``{"id", "key", "round", "checkpoint", "created", "values": {...}}``, oldest first."""
        sql = "SELECT id, key, round, checkpoint, created, values_json FROM metrics"
        params: tuple = ()
        if key is not None:
            sql += " WHERE key = ?"
            params = (key,)
        sql += " ORDER BY id"
        return [
            {"id": i, "key": k, "round": r, "checkpoint": c, "created": t, "values": json.loads(v)}
            for i, k, r, c, t, v in self.query(sql, params)
        ]

    def save_identities(
        self,
        checkpoint: str | Path,
        image_ids: Sequence[int] | np.ndarray,
        identity_ids: Sequence[int] | np.ndarray,
        confidences: Sequence[float] | np.ndarray,
    ) -> None:
        """Final identity per image for ``checkpoint``; replaces what that checkpoint had."""
        ids = np.asarray(image_ids, dtype=np.int64).ravel()
        ident = np.asarray(identity_ids, dtype=np.int64).ravel()
        conf = np.asarray(confidences, dtype=np.float64).ravel()
        if not (ids.shape == ident.shape == conf.shape):
            raise ValueError(f"lengths differ: {len(ids)} image ids, {len(ident)} identities, {len(conf)} confidences")
        key = str(checkpoint)
        with self.transaction() as con:
            con.execute("DELETE FROM identities WHERE checkpoint = ?", (key,))
            con.executemany(
                "INSERT INTO identities (checkpoint, image_id, identity, confidence) VALUES (?, ?, ?, ?)",
                zip([key] * len(ids), ids.tolist(), ident.tolist(), conf.tolist()),
            )

    def identities(self, checkpoint: str | Path | None = None) -> IdentityTable:
        """Identities of ``checkpoint``, or of the most recently saved checkpoint when ``None``."""
        with self._snapshot() as con:
            if checkpoint is None:
                row = con.execute("SELECT checkpoint FROM identities ORDER BY rowid DESC LIMIT 1").fetchone()
                if row is None:
                    return IdentityTable(None, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
                key = row[0]
            else:
                key = str(checkpoint)
            rows = con.execute(
                "SELECT image_id, identity, confidence FROM identities WHERE checkpoint = ? ORDER BY image_id", (key,)
            ).fetchall()
        if not rows:
            return IdentityTable(key, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        a, b, c = zip(*rows)
        return IdentityTable(
            key,
            np.fromiter(a, np.int64, len(rows)),
            np.fromiter(b, np.int64, len(rows)),
            np.fromiter(c, np.float64, len(rows)).astype(np.float32),
        )

    def latest_checkpoint(self) -> Path | None:
        """Checkpoint file of the last ``done`` round whose file still exists (absolute), else ``None``."""
        rows = self.query(
            "SELECT checkpoint FROM rounds WHERE status = 'done' AND checkpoint IS NOT NULL ORDER BY number DESC"
        )
        for (ckpt,) in rows:
            p = self.resolve_path(ckpt)
            if p.is_file():
                return p
        return None
