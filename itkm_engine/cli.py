"""The ``itkm`` command: a thin shell over the library.

Every sub-command parses its flags, opens the workspace, calls one library function with a
printing reporter, and prints a table.  User errors (:class:`ItkmError`) print one clear line and
exit with status 2; Ctrl-C cancels the job cleanly (training stays resumable) and exits 130.

``itkm --help`` answers at once: this module imports only the engine modules that cost nothing to
load.  A command imports the engine modules it runs (they load NumPy, torch or OpenCV, or build the
config's dataclasses) at its start: the one place in the engine, with the worker and the child-job
relay, where engine modules are imported inside functions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import sys
import time
from pathlib import Path

from .errors import Cancelled, ItkmError
from .progress import LogMessage, ProgressEvent, Reporter

EPILOG = "Run 'itkm COMMAND --help' for the options of one command."


# -- printing -------------------------------------------------------------------------------------
class ConsoleReporter(Reporter):
    """Progress on one updating line (a TTY) or a line every few seconds (logs); messages on stderr."""

    def __init__(self, job: str, quiet: bool = False) -> None:
        self._tty = sys.stderr.isatty()
        self._last = 0.0
        self._quiet = quiet
        super().__init__(self._event, self._log, job=job)

    def _event(self, e: ProgressEvent) -> None:
        # Progress and messages never stop the work: a closed log pipe (itkm train 2>&1 | head)
        # only ends the log.
        with contextlib.suppress(BrokenPipeError):
            self._show_event(e)

    def _show_event(self, e: ProgressEvent) -> None:
        if self._quiet:
            return
        now = time.monotonic()
        if now - self._last < (0.2 if self._tty else 5.0) and (e.fraction or 0) < 1.0:
            return
        self._last = now
        parts = [f"{100 * e.fraction:5.1f}%" if e.fraction is not None else "     "]
        if e.round is not None:
            parts.append(f"round {e.round}")
        if e.stage:
            parts.append(e.stage)
        if e.epoch is not None and e.epochs:
            parts.append(f"epoch {e.epoch + 1}/{e.epochs}")
        if e.step is not None and e.steps:
            parts.append(f"{e.step}/{e.steps}")
        if e.losses:
            parts.append(" ".join(f"{k}={v:.3f}" for k, v in list(e.losses.items())[:4]))
        if e.eta_s is not None and e.fraction and e.fraction < 1:
            parts.append(f"ETA {_duration(e.eta_s)}")
        if e.message:
            parts.append(e.message)
        line = "  ".join(parts)
        if self._tty:
            sys.stderr.write("\r\033[K" + line[:200])
            sys.stderr.flush()
        else:
            print(line, file=sys.stderr, flush=True)

    def _log(self, m: LogMessage) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._show_log(m)

    def _show_log(self, m: LogMessage) -> None:
        if self._quiet and m.level in ("debug", "info"):
            return
        if self._tty:
            sys.stderr.write("\r\033[K")
        prefix = "" if m.level == "info" else f"{m.level}: "
        print(prefix + m.text, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._tty and not self._quiet:
            with contextlib.suppress(BrokenPipeError):
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


#: Characters that would steer the terminal or hide text: bidirectional overrides and isolates.
_BIDI = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(value, limit: int | None = None) -> str:
    """``value`` as text that is safe to print to a terminal on one line: control characters
    (ESC, newline, ...), bidirectional overrides and the bytes of a non-UTF-8 name (surrogate
    escapes) become visible escapes (``\\x1b``, ``\\n``, ``\\xff``); everything else is kept.
    ``limit``: at most that many characters (a 5,000-digit argument is not echoed whole)."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF or ch in _BIDI:
            out.append(f"\\u{o:04x}")
        elif o < 0x20 or 0x7F <= o < 0xA0:
            out.append(_NAMED.get(ch, f"\\x{o:02x}"))
        else:
            out.append(ch)
    return "".join(out)


def print_table(rows: list[dict], cols: list[str] | None = None) -> None:
    if not rows:
        print("(none)")
        return
    cols = cols or list(rows[0].keys())
    cells = [[("" if r.get(c) is None else shown(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _json_out(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# -- commands -------------------------------------------------------------------------------------
def cmd_demo_data(a) -> int:
    from .data.demo import make_demo

    rep = ConsoleReporter("demo", a.quiet)
    info = make_demo(Path(a.dir), identities=a.identities, seed=a.seed, id_offset=a.id_offset, reporter=rep)
    rep.done()
    print(f"demo camera set in {info.root}: {info.n_images} crops of {info.n_identities} people")
    print_table([{"camera": name, **dataclasses.asdict(cam)} for name, cam in info.cameras.items()])
    return 0


def cmd_ingest(a) -> int:
    from .data.ingest import ingest
    from .workspace import Workspace

    _text_arg(a.site, "--site")
    rep = ConsoleReporter("ingest", a.quiet)
    with Workspace.open(a.workspace, create=True, reporter=rep) as ws:
        try:
            summary = ingest(ws, [Path(f) for f in a.folders], layout=a.layout, scenario=a.scenario, reporter=rep,
                             site=a.site)
        except (KeyboardInterrupt, Cancelled):
            rep.done()
            print("ingest stopped; the images added so far are in the workspace; run the same command again "
                  "to finish", file=sys.stderr)
            return 130
    rep.done()
    print(summary.format_table())
    return 0


def cmd_cameras(a) -> int:
    from .data.imageio import relpath_to_text
    from .workspace import Workspace

    with Workspace.open(a.workspace, readonly=not a.set, reporter=ConsoleReporter("cameras")) as ws:
        sites = ws.camera_sites()
        for cam, *assignments in a.set or []:
            if not assignments:
                raise ItkmError(f"say what to set for camera {cam!r}, e.g. --set {cam} scenario=visible-infrared group=infrared")
            kw = {}
            for item in assignments:
                if "=" not in item:
                    raise ItkmError(f"expected KEY=VALUE after the camera name, got {item!r} (keys: scenario, group)")
                k, v = item.split("=", 1)
                if k not in ("scenario", "group"):
                    raise ItkmError(f"unknown camera setting {k!r}; use scenario=... and/or group=...")
                kw[k] = v
            # A camera named after a folder whose name is not UTF-8 is stored in its text form
            # (relpath_to_text); typed as the folder's raw bytes it finds that camera.
            ws.set_camera(relpath_to_text(cam), **kw)
        rows = [
            {"camera": c.name, "images": c.n_images, "missing": c.n_missing, "rejected": c.n_rejected,
             "scenario": c.scenario, "group": c.group, "site": sites.get(c.name, ""),
             "median_h": f"{c.median_height:.0f}" if c.median_height else "",
             "set_by": "user" if c.user_set else "guess", "flag": c.flag or ""}
            for c in ws.cameras()
        ]
    if a.json:
        _json_out(rows)
    else:
        print_table(rows)
    return 0


def cmd_train(a) -> int:
    from .train_request import TrainRequest, check_request, run_training
    from .workspace import Workspace

    req = TrainRequest.from_args(a)
    check_request(req)  # a bad preset, --set, config file or device: refused at once, before torch loads
    rep = ConsoleReporter("train", a.quiet)
    with Workspace.open(a.workspace, reporter=rep) as ws:
        try:
            # the one entry point (train_request.py): settings, lineage, the interrupted round,
            # all checked before config.toml is written; then the rounds
            results = run_training(ws, req, reporter=rep)
        except (KeyboardInterrupt, Cancelled):
            rep.done()
            print("training stopped; run the same command again to resume from the last completed epoch",
                  file=sys.stderr)
            return 130
        rep.done()
        for r in results:
            last = {e["stage"]: e for e in r.epochs}
            print(f"round {r.round} done in {r.seconds:.0f} s -> {r.checkpoint}")
            rows = [{"stage": s, "epochs": sum(1 for e in r.epochs if e["stage"] == s),
                     **{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in e.get("values", e).items()
                        if k in ("loss", "n_clusters", "n_outliers", "chm_pairs", "ihm_pairs", "precision", "ari")}}
                    for s, e in last.items()]
            print_table(rows)
    return 0


def cmd_status(a) -> int:
    from .workspace import Workspace

    # The reporter shows what opening does: an older workspace is upgraded (after a backup, named).
    with Workspace.open(a.workspace, readonly=True, reporter=ConsoleReporter("status")) as ws:
        cams = ws.cameras()
        rounds = ws.rounds()
        latest = ws.latest_checkpoint()
        ev = ws.metrics("evaluation")
        ident = ws.identities() if latest else None
        status = {
            "workspace": str(ws.path),
            "cameras": len(cams),
            "images": sum(c.n_images for c in cams),
            "missing": sum(c.n_missing for c in cams),
            "rejected": sum(c.n_rejected for c in cams),
            "scenarios": sorted({c.scenario for c in cams}),
            "rounds": [{"round": r.number, "status": r.status, "stage": r.stage, "epoch": r.epoch,
                        "checkpoint": r.checkpoint} for r in rounds],
            "latest_checkpoint": str(latest) if latest else None,
            "identities": int(len(set(ident.identity.tolist()))) if ident is not None and len(ident) else 0,
            "last_evaluation": ev[-1] if ev else None,
        }
    if a.json:
        _json_out(status)
        return 0
    print(f"workspace  {status['workspace']}")
    print(f"cameras    {status['cameras']}  images {status['images']}  missing {status['missing']}  "
          f"rejected {status['rejected']}")
    print(f"scenarios  {', '.join(status['scenarios']) or '-'}")
    print(f"identities {status['identities']}")
    print_table(status["rounds"]) if status["rounds"] else print("no training rounds yet (itkm train)")
    if status["last_evaluation"]:
        from .evaluation import format_scores

        print(format_scores(status["last_evaluation"]["values"]))
    return 0


def _session(a, readonly: bool, reporter: Reporter | None = None):
    """The workspace's Session; opening messages (a stale lock taken over, a schema upgrade and
    its backup) go to ``reporter`` so the operator sees them."""
    from .config_check import check_device_present
    from .session import Session
    from .workspace import Workspace

    check_device_present(getattr(a, "device", None))  # --device cuda:7 without that GPU: one line
    ws = Workspace.open(a.workspace, readonly=readonly, reporter=reporter)
    try:
        return Session(ws, None, device=getattr(a, "device", None) or "auto")
    except BaseException:
        ws.close()
        raise


def cmd_extract(a) -> int:
    rep = ConsoleReporter("extract", a.quiet)
    with _session(a, readonly=False, reporter=rep) as s:
        fs = s.features(reporter=rep)
        rep.done()
        print(f"{len(fs)} features ({fs.feats.shape[1]}-d) with model {fs.key}"
              + (f"; {len(fs.failed)} unreadable images skipped" if fs.failed is not None and len(fs.failed) else ""))
    return 0


def cmd_query(a) -> int:
    from .session import QueryFilter, image_id_of

    rep = ConsoleReporter("query", a.quiet)
    with _session(a, readonly=True, reporter=rep) as s:
        filters = None
        if a.scenario or a.camera or a.group or a.other_cameras:
            filters = QueryFilter(frozenset(a.scenario) if a.scenario else None, frozenset(a.group) if a.group else None,
                                  frozenset(a.camera) if a.camera else None, a.other_cameras)
        s.features(reporter=rep)
        if a.text:
            matches = s.query_text(a.image, k=a.top_k, filters=filters)
        elif image_id_of(a.image) is not None and not Path(a.image).exists():
            matches = s.query_image(image_id_of(a.image), k=a.top_k, filters=filters, rerank=a.rerank)
        else:
            matches = s.query_file(a.image, k=a.top_k, filters=filters)
        rep.done()
    rows = [{"rank": i + 1, "similarity": round(m.similarity, 4), "camera": m.camera, "scenario": m.scenario,
             "group": m.group, "path": m.path} for i, m in enumerate(matches)]
    _json_out(rows) if a.json else print_table(rows)
    return 0


def _check_destination_first(a) -> None:
    """An export's destination (and ``--device``) checked before the session loads torch: a folder,
    a link or a user's image as OUT is refused at once, not after seconds of imports.  The export
    checks it again where it writes."""
    from .config_check import check_device_present
    from .export import check_export_destination
    from .workspace import Workspace

    check_device_present(getattr(a, "device", None))
    with Workspace.open(a.workspace, readonly=True) as ws:
        check_export_destination(ws, a.out)


def _store_after_read(a, rep: Reporter, what: str, write) -> None:
    """Keep what a read computed (the identities of the current model, an evaluation) with one
    short writer open -- a read holds no writer lock while it works, so it runs beside the app or a
    training run and on a read-only disk.  Where the workspace cannot be written now, say so and
    go on: the answer printed is the same."""
    from .errors import WorkspaceError, WorkspaceLockedError
    from .workspace import Workspace

    try:
        with Workspace.open(a.workspace, reporter=rep) as ws:
            write(ws)
    except WorkspaceLockedError as exc:
        holder = getattr(exc, "holder", None)
        who = f" (pid {holder.pid})" if holder is not None else ""
        rep.log(f"note: {what} not stored: another process{who} is writing the workspace; computed for this run only")
    except WorkspaceError:
        rep.log(f"note: {what} not stored: the workspace cannot be written here; computed for this run only")


def _keep_identities(a, rep: Reporter, s) -> None:
    table = s.unsaved_identities()
    if table is not None:
        _store_after_read(a, rep, "the identities",
                          lambda ws: ws.save_identities(table.checkpoint, table.image_id, table.identity, table.confidence))


def cmd_evaluate(a) -> int:
    from .evaluation import format_scores

    rep = ConsoleReporter("evaluate", a.quiet)
    with _session(a, readonly=True, reporter=rep) as s:  # a read: no writer lock (see _store_after_read)
        scores = s.evaluate(reporter=rep)
        key = s.checkpoint_key()
    rep.done()
    if not scores:
        raise ItkmError("nothing to evaluate: no person with a known id is seen by two cameras (ids come from "
                        "the folder layout, e.g. market or sysu; ingest such a folder to score the model)")
    _store_after_read(a, rep, "the evaluation", lambda ws: ws.save_metrics("evaluation", None, key, scores))
    _json_out(scores) if a.json else print(format_scores(scores))
    return 0


def cmd_export_tracks(a) -> int:
    from .export import export_tracks

    _check_destination_first(a)
    rep = ConsoleReporter("export", a.quiet)
    with _session(a, readonly=True, reporter=rep) as s:  # a read of the workspace (the file is the user's)
        n = export_tracks(s, a.out, reporter=rep)
    rep.done()
    _keep_identities(a, rep, s)
    print(f"{n} sightings written to {a.out}")
    return 0


def cmd_export_features(a) -> int:
    from .export import export_features

    _check_destination_first(a)
    rep = ConsoleReporter("export", a.quiet)
    with _session(a, readonly=True, reporter=rep) as s:  # a read of the workspace (the file is the user's)
        n = export_features(s, a.out, reporter=rep)
    rep.done()
    _keep_identities(a, rep, s)
    print(f"{n} feature rows written to {a.out}")
    return 0


def _decide(a, kind: str) -> int:
    rep = ConsoleReporter(kind, a.quiet)
    with _session(a, readonly=False, reporter=rep) as s:
        ia, ib = s.resolve_image(a.a), s.resolve_image(a.b)
        batch = s.confirm(ia, ib) if kind == "confirm" else s.reject(ia, ib)
    word = "same person" if kind == "confirm" else "not the same person"
    print(f"images {ia} and {ib}: {word} (step {batch}; the next round obeys it; undo: itkm identities WS --undo)")
    return 0


def cmd_confirm(a) -> int:
    return _decide(a, "confirm")


def cmd_reject(a) -> int:
    return _decide(a, "reject")


def cmd_identities(a) -> int:
    if a.note is not None and not a.name:
        raise ItkmError("--note goes with --name: itkm identities WORKSPACE --name X NAME --note TEXT")
    if a.name:
        name = (_identity_number(a.name[0], "--name"), _text_arg(a.name[1], "the name"), _text_arg(a.note or "", "--note"))
    rep = ConsoleReporter("identities", a.quiet)
    # Listing and --review are reads: no writer lock (they work beside the app or a training run,
    # and on a read-only disk); undo/redo/merge/split/name write.
    reading = not (a.undo or a.redo or a.merge or a.split or a.name)
    with _session(a, readonly=reading, reporter=rep) as s:
        if a.undo or a.redo:
            step = s.undo() if a.undo else s.redo()
            what = "undo" if a.undo else "redo"
            print(f"{what}: step {step}" if step is not None else f"nothing to {what}")
            return 0
        if a.merge:
            print(f"identities {a.merge[0]} and {a.merge[1]} merged (step {s.merge_identities(*a.merge)})")
            return 0
        if a.split:
            print(f"{len(a.split)} sightings split off into a new identity (step {s.split_identity(a.split)})")
            return 0
        if a.name:
            ident, text, note = name
            print(f"identity {ident} named {shown(repr(text))} (step {s.name_identity(ident, text, note)})")
            return 0
        if a.review:
            q = s.review_queue(a.review)
            images = s.images()
            rows = [{"a": p.image_a, "b": p.image_b, "similarity": round(p.similarity, 4),
                     "same_identity": p.same_identity, "cross_scenario": p.cross_scenario,
                     "path_a": images.path[images.index_of([p.image_a])[0]],
                     "path_b": images.path[images.index_of([p.image_b])[0]]} for p in q]
            _json_out(rows) if a.json else print_table(rows)
            _keep_identities(a, rep, s)
            return 0
        summary = s.identity_summary(reporter=rep)
        names = s.identity_names()
        confirmed = s.confirmed_image_ids()
        table = s.identities()
        n_conf = {}
        for i, ident in zip(table.image_id.tolist(), table.identity.tolist()):
            n_conf[ident] = n_conf.get(ident, 0) + (i in confirmed)
        rep.done()
    _keep_identities(a, rep, s)
    rows = [{"identity": x.identity, "name": names.get(x.identity, ("", ""))[0], "sightings": x.size,
             "confirmed": n_conf.get(x.identity, 0), "cameras": ",".join(x.cameras),
             "note": names.get(x.identity, ("", ""))[1]} for x in summary[: a.limit]]
    _json_out(rows) if a.json else print_table(rows)
    return 0


def cmd_export_onnx(a) -> int:
    _check_destination_first(a)  # before onnx_export imports torch
    from .onnx_export import check_destination, check_onnx, export_onnx

    rep = ConsoleReporter("export", a.quiet)
    with _session(a, readonly=True, reporter=rep) as s:
        out = check_destination(s.ws, a.out)
        export_onnx(s, out, group=a.group, reporter=rep)
        chk = None if a.no_check else check_onnx(s, out, n=32)
    rep.done()
    inputs = "images, scenario_idx" + ("" if a.group else ", group_idx")
    print(f"image encoder written to {out} (inputs: {inputs}; output: embedding)")
    if chk is not None:
        print(f"onnxruntime vs torch on {chk.n} crops: largest difference {chk.max_abs_diff:.3g}")
    return 0


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="itkm",
        description="ITKM Studio, headless: find the same person across cameras without labels "
        "(ITKM: image-text knowledge modelling for unsupervised multi-scenario person re-id).",
        epilog=EPILOG,
    )
    p.add_argument("--version", action="version", version="itkm-studio 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, fn, help_, ws=True):
        sp = sub.add_parser(name, help=help_, description=help_)
        if ws:
            sp.add_argument("workspace", metavar="WORKSPACE", help="workspace folder")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")
        sp.set_defaults(func=fn)
        return sp

    sp = add("demo-data", cmd_demo_data, "write the built-in multi-scenario demo camera set", ws=False)
    sp.add_argument("dir", metavar="DIR", help="output folder (created; must be empty or an earlier demo)")
    sp.add_argument("--identities", type=_positive_int, default=60, help="number of people (default 60, ~2,000 crops)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--id-offset", type=_non_negative_int, default=0, help="person ids start after this (a second demo set with "
                    "other people, e.g. for a second site: --id-offset 60)")

    sp = add("ingest", cmd_ingest, "add camera folders to a workspace (created if missing); re-run to pick up changes")
    sp.add_argument("folders", metavar="FOLDER", nargs="+", help="dataset or camera folders")
    sp.add_argument("--layout", help="force a layout instead of detecting it (see the error text for the list)")
    sp.add_argument("--scenario", help="scenario of these cameras: visible-infrared, cross-resolution, "
                    "clothing-change or cross-camera (default: guessed)")
    sp.add_argument("--site", help="where these folders were filmed; people are shared only within a site, and "
                    "Stage II keeps different sites' identities apart (default: one site for everything)")

    sp = add("cameras", cmd_cameras, "list cameras; correct a camera's scenario or group")
    sp.add_argument("--set", nargs="+", action="append", metavar=("CAMERA", "KEY=VALUE"),
                    type=str, help="e.g. --set cam3 scenario=visible-infrared group=infrared")
    sp.add_argument("--json", action="store_true")

    sp = add("train", cmd_train, "run training rounds (Stage I -> II -> III); re-run to resume an interrupted one")
    sp.add_argument("--rounds", type=_positive_int, default=1)
    sp.add_argument("--preset", choices=["tiny", "quick", "full"],
                    help="quick: small model for CPUs/demo; full: ViT-B-16 + OpenAI weights for a GPU "
                    "(default: the workspace's config.toml, else quick)")
    sp.add_argument("--config", help="a TOML config file (overrides --preset)")
    sp.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    sp.add_argument("--weights", help="local open_clip checkpoint file or folder instead of downloading")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value, e.g. --set stage2.separation=false --set stage1.epochs=5")
    sp.add_argument("--restart-round", action="store_true",
                    help="abandon an interrupted round (its saved progress is dropped, the round is marked "
                    "failed) and start a new one with the given settings")

    sp = add("status", cmd_status, "cameras, images, rounds, identities and the last evaluation")
    sp.add_argument("--json", action="store_true")

    sp = add("extract", cmd_extract, "compute (or complete) features of all images with the latest checkpoint")
    sp.add_argument("--device")

    sp = add("query", cmd_query, "rank the workspace's images against a query image, image id or text")
    sp.add_argument("image", metavar="IMAGE", help="an image file, a workspace image id, or text with --text")
    sp.add_argument("--text", action="store_true", help="IMAGE is a description, ranked with the CLIP text tower")
    sp.add_argument("--top-k", type=_positive_int, default=20)
    sp.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    sp.add_argument("--scenario", action="append", help="only these scenarios (repeatable)")
    sp.add_argument("--group", action="append", help="only these groups (repeatable)")
    sp.add_argument("--camera", action="append", help="only these cameras (repeatable)")
    sp.add_argument("--other-cameras", action="store_true", help="leave out the query's own camera")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--device")

    sp = add("evaluate", cmd_evaluate, "mAP / CMC (headline: cross-camera protocol; also standard and, for sysu, SYSU-MM01's), "
                                           "overall, per scenario and per cross-group direction (needs ids)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--device")

    sp = add("export-tracks", cmd_export_tracks, "identity tracks to CSV, one row per sighting, ordered by time")
    sp.add_argument("out", metavar="OUT.csv")
    sp.add_argument("--device")

    sp = add("export-features", cmd_export_features, "features with paths, cameras, scenarios, ids to NPZ")
    sp.add_argument("out", metavar="OUT.npz")
    sp.add_argument("--device")

    for name, fn, help_ in (("confirm", cmd_confirm, "the two images show the same person (a must-link the next round obeys)"),
                            ("reject", cmd_reject, "the two images show different people (a cannot-link the next round obeys)")):
        sp = add(name, fn, help_)
        sp.add_argument("a", metavar="A", help="image id or image path")
        sp.add_argument("b", metavar="B", help="image id or image path")

    sp = add("identities", cmd_identities, "list identities; merge, split, name them; undo/redo decisions; review queue")
    act = sp.add_mutually_exclusive_group()
    act.add_argument("--merge", nargs=2, type=_identity_type, metavar=("X", "Y"), help="identities X and Y are one person")
    act.add_argument("--split", nargs="+", metavar="IMAGE", help="these sightings (ids or paths) become a new identity")
    act.add_argument("--name", nargs=2, metavar=("X", "NAME"), help="name identity X (use --note for a note; "
                     "a name that starts with '-': --name X -- -NAME)")
    act.add_argument("--undo", action="store_true", help="undo the last decision (a merge/split/selection is one)")
    act.add_argument("--redo", action="store_true", help="redo the last undone decision")
    act.add_argument("--review", type=_positive_int, metavar="N", help="the N pairs nearest the decision boundary")
    sp.add_argument("--note", help="note stored with --name (only with --name; one starting with '-': --note=-TEXT)")
    sp.add_argument("--limit", type=_positive_int, default=50, help="rows to list (default 50)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--device")

    sp = add("export-onnx", cmd_export_onnx, "the fine-tuned image encoder as ONNX for trackers (checked with onnxruntime)")
    sp.add_argument("out", metavar="OUT.onnx")
    sp.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch check on 32 crops")
    sp.add_argument("--group", help="one group only (e.g. visible): no group_idx input, one pass instead of one "
                    "per group")
    sp.add_argument("--device")
    return p


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text} must be {least} or more")
    return value


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (``--top-k -1`` used to return everything)."""
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _whole_number(text, 0)


def _identity_number(text: str, what: str = "an identity") -> int:
    """An identity number as typed (plain ASCII digits, at most 18 of them); else one line."""
    from .session import image_id_of

    value = image_id_of(text)
    if value is None:
        raise ItkmError(f"{what}: {shown(repr(text), 60)} is not an identity number (a whole number from "
                        "'itkm identities WORKSPACE')")
    return value


def _identity_type(text: str) -> int:
    """argparse type of ``--merge``'s identity numbers."""
    try:
        return _identity_number(text)
    except ItkmError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _text_arg(value: str | None, what: str) -> str | None:
    """A text argument (a name, a note, a site) that must be UTF-8 text: bytes that are not (a
    Latin-1 terminal, a script) come in as surrogate escapes and are refused in one line before
    anything is written (SQLite would refuse them half-way through)."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ItkmError(f"{what} {shown(repr(value), 80)} is not UTF-8 text; type it again in a UTF-8 terminal") from None
    return value


def _dashed_name(argv: list[str]) -> list[str]:
    """``identities ... --name X -- -NAME``: a name that starts with ``-`` (argparse would take it
    for an option).  The ``--`` and the name become one value argparse keeps as it is."""
    out, i = list(argv), 0
    while i < len(out) - 3:
        if out[i] == "--name" and out[i + 2] == "--":
            out[i + 2 : i + 4] = [_DASHED + out[i + 3]]
        i += 1
    return out


#: Marks a value that followed ``--`` (argv can never hold a NUL character).
_DASHED = "\0"


#: Positional path arguments; an empty one would otherwise mean the current folder ("" -> ".").
_PATH_ARGS = {"workspace": "WORKSPACE", "dir": "DIR", "folders": "FOLDER", "out": "the output file"}


def _refuse_empty_paths(a) -> None:
    for attr, name in _PATH_ARGS.items():
        values = getattr(a, attr, None)
        for v in values if isinstance(values, list) else [values]:
            if v is not None and not str(v).strip():
                hint = "name a new file, e.g. tracks.csv" if attr == "out" else "give a path (. is the current folder)"
                raise ItkmError(f"{name} is empty; {hint}")


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a service stop, ``kill``) ends a command the way Ctrl-C does: the job stops
    cleanly, says so, and what was committed stays -- instead of dying without a word.  The
    previous handler is put back afterwards (``main`` is also called in-process)."""
    import signal
    import threading

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("KMP_DUPLICATE_LIB_OK", "TRUE")
    parser = build_parser()
    a = parser.parse_args(_dashed_name(sys.argv[1:] if argv is None else list(argv)))
    if getattr(a, "name", None):
        a.name = [v.removeprefix(_DASHED) for v in a.name]
    try:
        _refuse_empty_paths(a)
        with _terminate_as_interrupt():
            rc = a.func(a)
        sys.stdout.flush()  # a closed pipe (itkm status | head) is met here, not at exit
        return rc
    except ItkmError as exc:
        print(f"itkm {a.command}: {shown(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _output_closed()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        from .errors import is_out_of_memory

        if not is_out_of_memory(exc):
            raise
        # Training explains its own (train_request.run_training); this is extraction, a query, an export.
        print(f"itkm {a.command}: out of memory ({shown(exc, 200)}); lower data.extract_batch_size in the "
              "workspace's config.toml (the images embedded at once), or close other programs, then run it again; "
              "nothing was changed", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        # A full disk or a read-only / forbidden place met by a write outside the workspace's own
        # checks (an export file, config.toml): one line like any user error.  Every engine write
        # is atomic, so the file being written was left as it was.
        where = f" {exc.filename}" if exc.filename else ""
        advice = {errno.ENOSPC: "the disk is full; free some space and run the same command again",
                  errno.EDQUOT: "the disk quota is used up; free some space and run the same command again",
                  errno.EROFS: "that place is read-only; choose a writable one"}.get(exc.errno, "check that you may write there")
        print(f"itkm {a.command}: cannot write{where}: {exc.strerror or exc} ({advice}; "
              "files that were being written are unchanged)", file=sys.stderr)
        return 2


def _output_closed() -> int:
    """The reader of our standard output went away (``itkm status | head``): like other command
    line tools, stop quietly with status 141 (128 + SIGPIPE).  Standard output is pointed at
    /dev/null so the interpreter's last flush does not fail again with a second message."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 141


_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                                 errno.EIO, errno.ENAMETOOLONG})


if __name__ == "__main__":
    sys.exit(main())
