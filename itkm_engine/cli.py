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
import os
import sys
from pathlib import Path

from .console import ConsoleReporter, json_out, print_table, shown
from .cli_args import (DASHED, dashed_name, identity_number, identity_type, non_negative_int, positive_int,
                       refuse_empty_paths, text_arg)
from .errors import Cancelled, ItkmError
from .eta import format_duration
from .progress import Reporter

EPILOG = "Run 'itkm COMMAND --help' for the options of one command."

# -- commands -------------------------------------------------------------------------------------
def cmd_demo_data(a) -> int:
    from .data.demo import make_demo

    rep = ConsoleReporter("demo", a.quiet)
    info = make_demo(Path(a.dir), identities=a.identities, seed=a.seed, id_offset=a.id_offset, infrared=a.infrared,
                     reporter=rep)
    rep.done()
    print(f"demo camera set in {info.root}: {info.n_images} crops of {info.n_identities} people")
    print_table([{"camera": name, **dataclasses.asdict(cam)} for name, cam in info.cameras.items()])
    return 0


def cmd_ingest(a) -> int:
    from .data.ingest import ingest
    from .workspace import Workspace

    text_arg(a.site, "--site")
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
                if k not in ("scenario", "group", "site"):
                    raise ItkmError(f"unknown camera setting {k!r}; use scenario=..., group=... and/or site=...")
                kw[k] = v
            site = kw.pop("site", None)
            # A camera named after a folder whose name is not UTF-8 is stored in its text form
            # (relpath_to_text); typed as the folder's raw bytes it finds that camera.
            if kw:
                ws.set_camera(relpath_to_text(cam), **kw)
            if site is not None:
                _set_camera_site(ws, relpath_to_text(cam), site)
        rows = [
            {"camera": c.name, "images": c.n_images, "missing": c.n_missing, "rejected": c.n_rejected,
             "scenario": c.scenario, "group": c.group, "site": sites.get(c.name, ""),
             "median_h": f"{c.median_height:.0f}" if c.median_height else "",
             "set_by": "user" if c.user_set else "guess", "flag": c.flag or ""}
            for c in ws.cameras()
        ]
    if a.json:
        json_out(rows)
    else:
        print_table(rows)
    return 0


def _set_camera_site(ws, cam: str, site: str) -> None:
    """``cameras --set CAM site=X``: the site belongs to the folder the camera was ingested from, so
    every camera of that folder moves with it (said on the output)."""
    cams = ws.cameras()
    me = next((c for c in cams if c.name == cam), None)
    if me is None:
        raise ItkmError(f"no camera {cam!r} in this workspace (itkm cameras WORKSPACE lists them)")
    ws.set_source_site(me.source_id, site)
    others = sorted(c.name for c in cams if c.source_id == me.source_id and c.name != cam)
    root = next((str(s.root) for s in ws.sources() if s.id == me.source_id), "?")
    print(f"site of {shown(root)} set to {shown(repr(site))}" + (
        f" (its cameras {shown(', '.join([cam] + others))})" if others else f" (camera {shown(cam)})"))


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
            print(f"round {r.round} done in {format_duration(r.seconds)} -> {r.checkpoint}")
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
        n_ident, note = _identity_status(ws, rounds)
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
            "identities": n_ident if n_ident is not None else
            int(len(set(ident.identity.tolist()))) if ident is not None and len(ident) else 0,
            "identities_note": note,
            "last_evaluation": ev[-1] if ev else None,
        }
    if a.json:
        json_out(status)
        return 0
    print(f"workspace  {status['workspace']}")
    print(f"cameras    {status['cameras']}  images {status['images']}  missing {status['missing']}  "
          f"rejected {status['rejected']}")
    print(f"scenarios  {', '.join(status['scenarios']) or '-'}")
    print(f"identities {status['identities']}" + (f"  ({note})" if note else ""))
    print_table(status["rounds"]) if status["rounds"] else print("no training rounds yet (itkm train)")
    if status["last_evaluation"]:
        from .evaluation import format_scores

        print(format_scores(status["last_evaluation"]["values"]))
    return 0


def _identity_status(ws, rounds) -> tuple[int | None, str]:
    """The identities in effect -- the number the app, ``itkm identities`` and the tracks CSV show
    (stable ids, decisions obeyed) -- and what they do not cover yet; ``None`` before any listing."""
    from .workspace import identity_store

    n, head_round, _ckpt = identity_store.identity_count(ws)
    if not n:
        return None, ""
    notes = []
    done = [r.number for r in rounds if r.status == "done"]
    if done and head_round != done[-1]:
        notes.append(f"as of {'round ' + str(head_round) if head_round else 'before training'}; round {done[-1]} "
                     "finished since: 'itkm identities' lists its identities")
    ((new,),) = ws.query("SELECT COUNT(*) FROM images WHERE status = 'ok' AND id NOT IN "
                         "(SELECT image_id FROM identity_ids)")
    if new:
        notes.append(f"{new} image{'s' if new != 1 else ''} in no identity yet: 'itkm identities' joins new images "
                     "to their nearest identity")
    return n, "; ".join(notes)


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
        if a.text:
            if a.rerank:
                raise ItkmError("--rerank re-ranks image queries only (it compares image neighbourhoods); "
                                "leave it out with --text")
            reason = s.text_search_unavailable()
            if reason is not None:  # before any features are computed
                raise ItkmError(reason)
        s.features(reporter=rep)
        if a.text:
            matches = s.query_text(a.image, k=a.top_k, filters=filters)
        elif image_id_of(a.image) is not None and not Path(a.image).exists():
            matches = s.query_image(image_id_of(a.image), k=a.top_k, filters=filters, rerank=a.rerank)
        else:
            matches = s.query_file(a.image, k=a.top_k, filters=filters, rerank=a.rerank)
        rep.done()
    # the score column says what the number is: a cosine, a re-ranked score (not a cosine), or an
    # image-text cosine; three decimals everywhere in the table (JSON: the number); decision: the
    # operator's answer about this match and the query (rankings obey it: confirmed first)
    score = "text_cosine" if a.text else "rerank_score" if a.rerank else "cosine"
    if a.json:
        json_out([{"rank": i + 1, score: round(m.similarity, 4), "image_id": m.image_id, "camera": m.camera,
                    "scenario": m.scenario, "group": m.group, "decision": m.decision or "", "path": m.path}
                   for i, m in enumerate(matches)])
        return 0
    print_table([{"rank": i + 1, score: f"{m.similarity:.3f}", "image": m.image_id, "camera": m.camera,
                  "scenario": m.scenario, "group": m.group, "decision": m.decision or "", "path": m.path}
                 for i, m in enumerate(matches)])
    if a.rerank:
        print("rerank_score: 1 - the k-reciprocal re-ranked distance (compare it only within this list)")
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
    """Keep the identities a read computed -- the clustering and the stable ids it answered with
    (``Session.keep_identities``: through the identity store, with their lineage) -- so the ids
    just shown are the ids in effect, and the next read does not compute them again."""
    if not s.unsaved_identities():
        return

    def write(ws) -> None:
        if not s.keep_identities(ws):
            rep.log("note: the identity ids not stored: decisions were changed since this read; "
                    "the next 'itkm identities' stores them")

    _store_after_read(a, rep, "the identities", write)


def cmd_answer(a) -> int:
    rep = ConsoleReporter("answer", a.quiet)
    if not (a.yes or a.no):
        with _session(a, readonly=True, reporter=rep) as s:
            q = s.resolve_image(a.image)
            sel = s.answer_selection(q, a.top_k)
            images = s.images()
            rep.done()
            rows = [{"rank": x.rank, "image": x.image_id, "similarity": round(x.similarity, 4),
                     "camera": str(images.camera[images.index_of([x.image_id])[0]]),
                     "model_says": "same" if x.same_label else "different",
                     "path": images.path[images.index_of([x.image_id])[0]]} for x in sel]
        if a.json:
            json_out(rows)
        elif rows:
            print_table(rows)
            print(f"answer with: itkm answer WS {q} --yes IMAGE... --no IMAGE...")
        else:
            print(f"nothing left to answer about image {q}: every result near it has been decided")
        _keep_identities(a, rep, s)
        return 0
    with _session(a, readonly=False, reporter=rep) as s:
        q = s.resolve_image(a.image)
        step = s.answer(q, a.yes or [], a.no or [])
        _identities_after(s)  # stored at once, so undo gives this step's ids back
    rep.done()
    print(f"image {q}: {len(a.yes or [])} same person, {len(a.no or [])} not (step {step}; rankings obey it now, "
          "the next round learns from it; undo: itkm identities WS --undo)")
    return 0


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
    json_out(scores) if a.json else print(format_scores(scores))
    return 0


def cmd_export_tracks(a) -> int:
    from .export import export_tracks

    _check_destination_first(a)
    rep = ConsoleReporter("export", a.quiet)
    with _session(a, readonly=True, reporter=rep) as s:  # a read of the workspace (the file is the user's)
        n = export_tracks(s, a.out, reporter=rep)
        provisional = int(s.identities().provisional.sum())
        missing = s.unassigned()
        if a.lineage:
            from .export import export_lineage

            n_lineage = export_lineage(s, a.lineage)
    rep.done()
    _keep_identities(a, rep, s)
    print(f"{n} sightings written to {a.out}" + (f" ({provisional} provisional: ingested after the identities were "
                                                  "computed, joined to their nearest identity)" if provisional else ""))
    for why, k in missing.items():
        print(f"{k} image{'s' if k != 1 else ''} not written, in no identity yet: {why}")
    if a.lineage:
        print(f"{n_lineage} lineage events written to {a.lineage}")
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
        now = _identities_after(s)
    word = "same person" if kind == "confirm" else "not the same person"
    where = f"; now identities {' and '.join(f'#{now[i]}' for i in dict.fromkeys((ia, ib)) if i in now)}" if now else ""
    print(f"images {ia} and {ib}: {word} (step {batch}{where}; the next round obeys it; undo: itkm identities WS --undo)")
    return 0


def _identities_after(s) -> dict[int, int]:
    """After a decision: the identities obeying it, stored (so the step's ids come back on undo),
    as ``{image id: identity}`` -- when the identities of this model were listed before (listing
    them the first time clusters every image, which a decision need not wait for); else ``{}``."""
    from .workspace import identity_store

    if identity_store.identity_count(s.ws)[2] != s.checkpoint_key():
        return {}
    t = s.identities()
    return dict(zip(t.image_id.tolist(), t.identity.tolist()))


def cmd_confirm(a) -> int:
    return _decide(a, "confirm")


def cmd_reject(a) -> int:
    return _decide(a, "reject")


def cmd_identities(a) -> int:
    from .records import rows_of

    if a.override and not a.merge:
        raise ItkmError("--override goes with --merge: itkm identities WORKSPACE --merge X Y --override")
    if a.together and not a.split:
        raise ItkmError("--together goes with --split: itkm identities WORKSPACE --split IMAGE IMAGE --together")
    if a.note is not None and not a.name:
        raise ItkmError("--note goes with --name: itkm identities WORKSPACE --name X NAME --note TEXT")
    if a.name:
        name = (identity_number(a.name[0], "--name"), text_arg(a.name[1], "the name"), text_arg(a.note or "", "--note"))
    rep = ConsoleReporter("identities", a.quiet)
    # Listing and --review are reads: no writer lock (they work beside the app or a training run,
    # and on a read-only disk); undo/redo/merge/split/name write.
    reading = not (a.undo or a.redo or a.merge or a.split or a.name)
    with _session(a, readonly=reading, reporter=rep) as s:
        if a.undo or a.redo:
            step = s.undo() if a.undo else s.redo()
            _identities_after(s)
            what = "undo" if a.undo else "redo"
            print(f"{what}: {s.describe_step(step)} (step {step})" if step is not None else f"nothing to {what}")
            return 0
        if a.merge:
            x, y = a.merge
            t = s.identities()
            anchor = t.image_id[t.identity == x][:1]
            step = s.merge_identities(x, y, override=a.override)
            now = s.identities()  # stored at once: undo gives these ids back
            into = f" into #{int(now.identity[rows_of(now.image_id, anchor)][0])}" if len(anchor) else ""
            print(f"identities #{x} and #{y} merged{into} (step {step})")
            return 0
        if a.split:
            step = s.split_identity(a.split, together=a.together)
            t = s.identities()
            now = dict(zip(t.image_id.tolist(), t.identity.tolist()))
            moved = sorted({now.get(s.resolve_image(i)) for i in a.split} - {None})
            what = "into a new identity" if a.together or len(a.split) == 1 else "each into an identity of its own"
            print(f"{len(a.split)} sightings split off {what} (step {step}): now "
                  + ", ".join(f"#{i}" for i in moved))
            return 0
        if a.name:
            ident, text, note = name
            print(f"identity {ident} named {shown(repr(text))} (step {s.name_identity(ident, text, note)})")
            return 0
        if a.review:
            q = s.review_queue(a.review)
            images = s.images()
            if a.json:
                json_out([{"a": p.image_a, "b": p.image_b, "similarity": round(p.similarity, 4),
                            "boundary": round(p.boundary, 4), "same_identity": p.same_identity,
                            "same_label": p.same_label, "cross_scenario": p.cross_scenario,
                            "direction": p.direction, "change": round(p.change, 3),
                            "path_a": images.path[images.index_of([p.image_a])[0]],
                            "path_b": images.path[images.index_of([p.image_b])[0]]} for p in q])
            else:
                _print_review(a.workspace, q, images)
            _keep_identities(a, rep, s)
            return 0
        summary = s.identity_summary(reporter=rep)
        names = s.identity_names()
        confirmed = s.confirmed_image_ids()
        table = s.identities()
        history = s.identity_history([x.identity for x in summary[: a.limit]])
        missing = s.unassigned()
        n_conf, n_prov = {}, {}
        for i, ident, p in zip(table.image_id.tolist(), table.identity.tolist(), table.provisional.tolist()):
            n_conf[ident] = n_conf.get(ident, 0) + (i in confirmed)
            n_prov[ident] = n_prov.get(ident, 0) + p
        rep.done()
    _keep_identities(a, rep, s)
    rows = [{"identity": x.identity, "name": names.get(x.identity, ("", ""))[0], "sightings": x.size,
             "confirmed": n_conf.get(x.identity, 0), "provisional": n_prov.get(x.identity, 0),
             "cameras": ",".join(x.cameras), "history": history.get(x.identity, ""),
             "note": names.get(x.identity, ("", ""))[1]} for x in summary[: a.limit]]
    if a.json:
        json_out(rows)
        return 0
    print_table(rows)
    largest = f" (the {len(rows)} largest shown; --limit N shows more)" if len(rows) < len(summary) else ""
    print(f"{len(summary)} identities{largest}")
    for why, k in missing.items():
        print(f"{k} image{'s' if k != 1 else ''} in no identity yet: {why}")
    return 0


def _print_review(workspace: str, queue, images) -> None:
    """``identities --review``: the pairs in the queue's order (per direction, every group of each
    scenario in turn; inside a direction the pairs whose answer would change a label first),
    narrow, and the commands that decide one."""
    import shlex

    if not queue:
        print("nothing to review: every candidate pair has been decided")
        return
    cam = dict(zip(images.id.tolist(), (shown(c, 40) for c in images.camera)))
    print(f"{len(queue)} pairs to review, per direction (every group in turn), those whose answer would change a "
          "label first; from_boundary: the similarity against its direction's decision boundary (midway between "
          "pairs the last round puts together and pairs it keeps apart):")
    rows = [{"#": i + 1, "a": p.image_a, "b": p.image_b, "cameras": f"{cam.get(p.image_a, '?')}/{cam.get(p.image_b, '?')}",
             "similarity": f"{p.similarity:.3f}", "from_boundary": f"{p.similarity - p.boundary:+.3f}",
             "round": "together" if p.same_label else "apart", "change": f"{p.change:.2f}",
             "identities": "same" if p.same_identity else "different"} for i, p in enumerate(queue)]
    print_table(rows)
    ws, first = shlex.quote(str(workspace)), queue[0]
    print("decide a pair (A and B from the table):")
    print(f"  itkm confirm {ws} A B    # same person")
    print(f"  itkm reject {ws} A B     # different people")
    print(f"e.g. pair 1: itkm confirm {ws} {first.image_a} {first.image_b}")


def cmd_export_onnx(a) -> int:
    _check_destination_first(a)  # before onnx_export imports torch
    from .onnx_export import check_destination, check_onnx, export_onnx, trained_round

    rep = ConsoleReporter("export", a.quiet)
    with _session(a, readonly=True, reporter=rep) as s:
        out = check_destination(s.ws, a.out)
        export_onnx(s, out, group=a.group, reporter=rep)
        chk = None if a.no_check else check_onnx(s, out, n=32)
        done = trained_round(s)
    rep.done()
    inputs = "images, scenario_idx" + ("" if a.group else ", group_idx")
    which = f"round {done}'s fine-tuned image encoder" if done is not None else \
        "the INITIAL image encoder (not trained yet: train a round first for the fine-tuned one)"
    print(f"{which} written to {out} (inputs: {inputs}; output: embedding)")
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
    sp.add_argument("--identities", type=positive_int, default=60, help="number of people (default 60, ~2,000 crops)")
    sp.add_argument("--seed", type=int, default=0, help="random seed of the drawn people, clothes and cameras "
                    "(default 0: the same set every time; another seed draws another set)")
    sp.add_argument("--id-offset", type=non_negative_int, default=0, help="person ids start after this (a second demo set with "
                    "other people, e.g. for a second site: --id-offset 60)")
    sp.add_argument("--infrared", choices=("both", "thermal", "nir"), default="both",
                    help="infrared cameras: both (default: ir-a thermal-looking, ir-b near-infrared), thermal (ir-a "
                    "only), nir (ir-a filmed as near-infrared, like SYSU-MM01/RegDB infrared cameras)")

    sp = add("ingest", cmd_ingest, "add camera folders to a workspace (created if missing); re-run to pick up changes")
    sp.add_argument("folders", metavar="FOLDER", nargs="+", help="dataset or camera folders")
    sp.add_argument("--layout", help="force a layout instead of detecting it (see the error text for the list)")
    sp.add_argument("--scenario", help="scenario of these cameras: visible-infrared, cross-resolution, "
                    "clothing-change or cross-camera (default: guessed)")
    sp.add_argument("--site", help="where these folders were filmed; people are shared only within a site, and "
                    "Stage II keeps different sites' identities apart (default: one site for everything)")

    sp = add("cameras", cmd_cameras, "list cameras; correct a camera's scenario, group or site")
    sp.add_argument("--set", nargs="+", action="append", metavar=("CAMERA", "KEY=VALUE"),
                    type=str, help="e.g. --set cam3 scenario=visible-infrared group=infrared, or --set cam3 "
                    "site=depot (a site belongs to the folder the camera came from: its other cameras move too)")
    sp.add_argument("--json", action="store_true")

    sp = add("train", cmd_train, "run training rounds (Stage I -> II -> III); re-run to resume an interrupted one")
    sp.add_argument("--rounds", type=positive_int, default=1,
                    help="training rounds to run, each Stage I -> II -> III starting from the last one's model "
                    "(default 1; an interrupted round is finished first and counts as one)")
    sp.add_argument("--preset", choices=["tiny", "quick", "full"],
                    help="quick: an ImageNet MobileNetV2 tower for CPUs and the demo (text search off: its text "
                    "tower is random); full: ViT-B-16 + OpenAI CLIP weights for a GPU; tiny: a tiny random model "
                    "for tests, trains in seconds and learns nothing useful "
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
    sp.add_argument("--text", action="store_true", help="IMAGE is a description, ranked with the CLIP text tower "
                    "(only where it has CLIP's pretrained weights: --preset full; off, with the reason, otherwise)")
    sp.add_argument("--top-k", type=positive_int, default=20, help="number of matches to list (default 20)")
    sp.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking of an image query (an id or "
                    "an ingested file); the score column is then rerank_score, not a cosine")
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

    sp = add("export-tracks", cmd_export_tracks, "identity tracks to CSV, one row per sighting, grouped by identity "
             "(largest first), each identity's sightings in time order; time_source says where a time comes from")
    sp.add_argument("out", metavar="OUT.csv")
    sp.add_argument("--lineage", metavar="LINEAGE.csv", help="also write the identities' lineage (new, merged into, "
                    "split from, retired into; with the decision step or round) to this CSV")
    sp.add_argument("--device")

    sp = add("export-features", cmd_export_features, "features with paths, cameras, scenarios, ids to NPZ")
    sp.add_argument("out", metavar="OUT.npz")
    sp.add_argument("--device")

    for name, fn, help_ in (("confirm", cmd_confirm, "the two images show the same person (a must-link the next round obeys)"),
                            ("reject", cmd_reject, "the two images show different people (a cannot-link the next round obeys)")):
        sp = add(name, fn, help_)
        sp.add_argument("a", metavar="A", help="image id or image path")
        sp.add_argument("b", metavar="B", help="image id or image path")

    sp = add("answer", cmd_answer, "search-and-answer: list an image's results to answer about, or record yes/no "
             "answers on them (one undo step)")
    sp.add_argument("image", metavar="IMAGE", help="the query: image id or image path")
    sp.add_argument("--top-k", type=positive_int, default=10, help="results to list (default 10)")
    sp.add_argument("--yes", nargs="+", metavar="IMAGE", help="these results show the query's person")
    sp.add_argument("--no", nargs="+", metavar="IMAGE", help="these results show someone else")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--device")

    sp = add("identities", cmd_identities, "list identities; merge, split, name them; undo/redo decisions; review queue")
    act = sp.add_mutually_exclusive_group()
    act.add_argument("--merge", nargs=2, type=identity_type, metavar=("X", "Y"), help="identities X and Y are one "
                     "person (the merged identity keeps the named, else the older id)")
    act.add_argument("--split", nargs="+", metavar="IMAGE", help="these sightings (ids or paths) leave their identity: "
                     "each becomes an identity of its own (with --together: one new identity)")
    act.add_argument("--name", nargs=2, metavar=("X", "NAME"), help="name identity X (use --note for a note; "
                     "a name that starts with '-': --name X -- -NAME)")
    act.add_argument("--undo", action="store_true", help="undo the last decision (a merge/split/selection is one)")
    act.add_argument("--redo", action="store_true", help="redo the last undone decision")
    act.add_argument("--review", type=positive_int, metavar="N", help="the N pairs to review next: per direction, "
                     "every group in turn, those whose answer would change a label first; with the itkm confirm / "
                     "reject command that decides one")
    sp.add_argument("--note", help="note stored with --name (only with --name; one starting with '-': --note=-TEXT)")
    sp.add_argument("--override", action="store_true", help="with --merge: overrule decisions that said sightings of "
                    "the two identities are different people (refused otherwise)")
    sp.add_argument("--together", action="store_true", help="with --split: the sightings split off are one person")
    sp.add_argument("--limit", type=positive_int, default=50, help="rows to list (default 50)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--device")

    sp = add("export-onnx", cmd_export_onnx, "the fine-tuned image encoder as ONNX for trackers (checked with onnxruntime)")
    sp.add_argument("out", metavar="OUT.onnx")
    sp.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-torch check on 32 crops")
    sp.add_argument("--group", help="one group only (e.g. visible): no group_idx input, one pass instead of one "
                    "per group")
    sp.add_argument("--device")
    return p


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
    a = parser.parse_args(dashed_name(sys.argv[1:] if argv is None else list(argv)))
    if getattr(a, "name", None):
        a.name = [v.removeprefix(DASHED) for v in a.name]
    try:
        refuse_empty_paths(a)
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
