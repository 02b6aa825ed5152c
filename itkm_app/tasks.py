"""The app's off-GUI work: every function a job of the window or of a panel runs, in one place.

Each is a plain function: it takes the open :class:`~itkm_engine.workspace.Workspace` or
:class:`~itkm_engine.session.Session` and its parameters, and a ``reporter`` keyword
(:class:`itkm_engine.progress.Reporter`), calls the engine and returns plain data.  The window
and the panels submit them through the job manager (``itkm_app/jobs.py``, the one Qt bridge) or
a panel's task slot (``itkm_app/task_slot.py``); they run on a job thread and never touch a
widget.  Panels build their jobs from these names and import no engine internals to do it.

Qt-free, and nothing heavy at import: the window shows before torch and UMAP are loaded
(``tests/test_app_startup.py``).  The engine's torch and UMAP sides are imported by one job
thread at a time (:func:`import_engine`, :func:`import_projection`): two threads importing parts
of torch at once deadlocked in a test run (``docs/adr/0002-jobs-and-threads.md``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

__all__ = ["CHILD_NICE", "import_engine", "import_projection",
           # the window
           "warm_up", "probe_devices", "describe_device", "open_session", "make_demo_workspace", "read_rounds",
           "read_images", "read_camera_sites", "compute_in_child", "extract_features", "export_tracks", "export_onnx",
           "follow_umask", "APP_OWNER", "workspace_changes",
           # Cameras
           "camera_samples", "read_cameras", "read_rejects", "set_camera", "reset_cameras", "set_site",
           "ingest_plan", "ingest_folders",
           # Training
           "run_training", "read_training_history", "evaluate",
           # Clusters, Identities, Gallery
           "projection", "cached_projection", "identities", "named_identities", "identity_overview", "query_image", "query_file", "query_text",
           "review_queue"]

#: Scheduling priority of the child processes that run heavy jobs (training, features, the 2-D
#: map; ``itkm_engine.child_job``).  Unlike job threads, a child shares no GIL with the GUI
#: thread, so a lower priority only makes it yield the CPU to the window; kept small so training
#: on a busy machine is not starved.  See docs/adr/0008-jobs-in-a-child-process.md.
CHILD_NICE = 3


# -- heavy imports, one thread at a time ------------------------------------------------------------

_IMPORT_LOCK = threading.Lock()
_imported: set[str] = set()


def _import_once(name: str, modules: tuple[str, ...]) -> None:
    if name in _imported:
        return
    import importlib

    with _IMPORT_LOCK:
        if name in _imported:
            return
        for m in modules:
            importlib.import_module(m)
        _imported.add(name)


def import_engine() -> None:
    """Import torch and the engine's torch-side modules, once, one thread at a time.

    Importing torch is not thread-safe: two job threads importing parts of it at the same
    time (say, opening the session while the Training panel reads checkpoint keys) can
    deadlock inside torch's lazy imports.  Every job that may be the first to touch torch calls
    this first; after the first call it costs nothing.
    """
    _import_once("engine", ("torch", "itkm_engine.model.checkpoint", "itkm_engine.trainer",
                            "itkm_engine.session"))


def import_projection() -> None:
    """Import UMAP, numba, scikit-learn and faiss once, under the same lock as torch."""
    import_engine()
    _import_once("projection", ("faiss", "sklearn.decomposition", "scipy.spatial", "umap",
                                "itkm_engine.projection"))


# -- the window ------------------------------------------------------------------------------------

def warm_up(*, reporter) -> None:
    """Pay the one-time costs in the background: heavy imports and UMAP's numba JIT."""
    reporter.update(0.0, stage="warm-up", message="loading libraries")
    import_engine()
    reporter.check()
    import_projection()  # scipy.spatial: the scatter's hover index
    reporter.check()
    reporter.update(0.3, stage="warm-up", message="compiling UMAP")
    from itkm_engine.projection import warm_up as umap_warm_up

    umap_warm_up()
    reporter.update(1.0, stage="warm-up", message="ready")


def probe_devices(*, reporter) -> list[tuple[str, str]]:
    """Devices the Training panel offers: automatic, the CPU, each CUDA GPU."""
    import_engine()
    import torch

    cpu = f"CPU ({os.cpu_count()} cores)"
    devs = [("cpu", cpu)]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devs.append((f"cuda:{i}", f"GPU {i}: {torch.cuda.get_device_name(i)}"))
    auto = devs[1][1] if len(devs) > 1 else cpu
    return [("auto", f"Automatic ({auto})")] + devs


def describe_device(device) -> str:
    """"CPU (N cores)" or the GPU's name, for the status bar and the device combo."""
    import torch

    d = torch.device(device)
    if d.type == "cuda" and torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(d.index or 0)}"
    if d.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({os.cpu_count()} cores)"


def open_session(ws, device: str = "auto", *, reporter):
    """The Session over an open Workspace, its images, and a description of its device."""
    reporter.update(0.0, stage="session", message="loading the model library")
    import_engine()
    from itkm_engine.session import Session

    reporter.check()
    session = Session(ws, device=device)
    images = session.images()
    return session, images, describe_device(session.device)


def make_demo_workspace(demo_dir: Path, ws_dir: Path, identities: int = 60, *, reporter):
    """The demo camera set and a workspace holding it (reused when both exist).  A demo whose
    making or adding was stopped is finished: both steps keep what is already there."""
    from itkm_engine.data.demo import make_demo
    from itkm_engine.data.ingest import ingest
    from itkm_engine.workspace import Workspace

    info = make_demo(demo_dir, identities=identities, reporter=reporter.child(0.0, 0.6, "demo"))
    ws = Workspace.open(ws_dir, create=True)
    try:
        if ws.image_count() < info.n_images:  # none yet, or the batches before a cancel
            ingest(ws, [demo_dir], reporter=reporter.child(0.6, 1.0, "ingest"))
    finally:
        ws.close()
    return ws_dir


#: How the app names itself in a workspace's lock file while it writes (what a refused ``itkm``
#: command says: "being written by pid N (itkm-app: adding camera folders)").
APP_OWNER = "itkm-app"


def workspace_changes(ws, session, since: dict | None, own: frozenset = frozenset(), *, reporter):
    """What changed since the stamp ``since`` (``Workspace.change_stamp``): (the stamp now, the
    parts that changed, the process writing the workspace now or None).  The session forgets what
    it derived from a part another process changed -- not from ``own``, the parts the app changed
    and followed itself (off the GUI thread: it may wait for a computation in progress)."""
    stamp = ws.change_stamp()
    changed = [] if since is None else [k for k in stamp if stamp[k] != since.get(k)]
    if session is not None and {"images", "model"} & (set(changed) - own):
        session.refresh()
    return stamp, changed, ws.other_writer()


def read_rounds(ws, *, reporter):
    """The workspace's rounds (which round's model it serves), read off the GUI thread while
    a writer may hold the workspace's connection lock."""
    return ws.rounds()


def read_images(session, *, reporter):
    """The session's image table, re-read after cameras or the model changed."""
    return session.images()


def compute_in_child(session, kind: str, *, reporter) -> bool:
    """``itkm_engine.child_job.compute_in_child`` at the app's child priority.  Run it only as a
    ``write`` job: the child borrows the workspace's writer lock (see ADR 0008)."""
    from itkm_engine.child_job import compute_in_child as compute

    if session.ws.readonly:  # opened read-only, or lent to a running job: compute here as before
        return False
    import_engine()  # the cache check reads the model's checkpoint key
    return compute(session, kind, reporter=reporter, nice=CHILD_NICE)


def extract_features(session, *, reporter) -> bool:
    """The current model's features, extracted by a child process (nothing when cached)."""
    return compute_in_child(session, "features", reporter=reporter)


def export_tracks(session, out_csv: str, *, reporter) -> int:
    """Identity tracks to a CSV file with the permissions a new file gets here; rows written."""
    import_engine()
    from itkm_engine.export import export_tracks as export

    n = export(session, out_csv, reporter=reporter)
    follow_umask(out_csv)
    return n


def export_onnx(session, out: str, *, reporter):
    """The current image encoder to ONNX, checked with onnxruntime on 32 crops: ``(round or None,
    OnnxCheck)``.  The file gets the permissions a new file gets here."""
    import_engine()
    from itkm_engine.onnx_export import check_onnx, export_onnx as export, trained_round

    export(session, out, reporter=reporter.child(0.0, 0.8))
    reporter.update(0.85, stage="export", message="checking the file with onnxruntime")
    chk = check_onnx(session, out, n=32)
    follow_umask(out)
    return trained_round(session), chk


def follow_umask(path: str | Path) -> None:
    """Give a file the permissions a new file gets here (atomic writes create it 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


# -- Cameras -----------------------------------------------------------------------------------------

def camera_samples(images, n: int) -> dict[str, list[str]]:
    """Up to ``n`` image paths per camera, spread evenly over its images (not only the first)."""
    out: dict[str, list[str]] = {}
    cams = np.asarray(images.camera).astype(str)
    for cam in np.unique(cams):
        rows = np.flatnonzero(cams == cam)
        pick = rows[np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int)]
        out[str(cam)] = [str(images.path[r]) for r in pick]
    return out


def read_cameras(ws, samples: int, *, reporter):
    """The Cameras view's data: cameras, site per source id, ``samples`` paths per camera, sources."""
    cams = ws.cameras()
    sources = ws.sources()
    sites = {src.id: src.site for src in sources}
    paths = camera_samples(ws.images(), samples) if cams else {}
    return cams, sites, paths, sources


def read_rejects(ws, *, reporter):
    """The files ingestion refused, with their reasons."""
    return ws.rejects()


def set_camera(ws, session, name: str, scenario: str, group: str, *, reporter) -> str:
    """A camera's scenario and group, set by the user."""
    ws.set_camera(name, scenario=scenario, group=group)
    if session is not None:
        session.refresh()
    return name


def reset_cameras(ws, session, names: list[str], *, reporter) -> None:
    """Back to the scenario and group that ingestion guessed for these cameras."""
    for n in names:
        ws.reset_camera(n)
    if session is not None:
        session.refresh()


def set_site(ws, session, source_id: int, site: str, *, reporter) -> None:
    """The site of one source folder (it applies to every camera ingested from it)."""
    ws.set_source_site(source_id, site)
    if session is not None:
        session.refresh()


def ingest_plan(folders: list[str], layout: str | None) -> list[tuple[str | None, list[str]]]:
    """(layout, folders) groups for ``ingest``: with layout detection, a folder of loose crops from
    one camera is ingested as that camera, named after the folder (the "one-camera" layout)."""
    if layout is not None:
        return [(layout, list(folders))]
    from itkm_engine.data.layouts import LAYOUTS

    one = [f for f in folders if LAYOUTS["one-camera"].matches(Path(f))]
    rest = [f for f in folders if f not in one]
    return [(lay, group) for lay, group in (("one-camera", one), (None, rest)) if group]


def ingest_folders(ws, session, folders: list[str], layout: str | None = None, scenario: str | None = None,
                   site: str | None = None, *, reporter):
    """Ingest ``folders`` into the workspace (see :func:`ingest_plan`); one summary for all."""
    from itkm_engine.data.ingest import ingest

    plan = ingest_plan(folders, layout)
    summary = None
    for i, (lay, group) in enumerate(plan):
        part = ingest(ws, group, layout=lay, scenario=scenario, site=site,
                      reporter=reporter.child(i / len(plan), (i + 1) / len(plan)))
        if summary is None:
            summary = part
        else:
            summary.cameras.extend(part.cameras)
            summary.sources.extend(part.sources)
            summary.reject_reasons.update(part.reject_reasons)
    if session is not None:
        session.refresh()
    return summary


# -- Training ------------------------------------------------------------------------------------------

def run_training(session, request, *, reporter):
    """The training job: ``request`` (an ``itkm_engine.train_request.TrainRequest``: what the user
    chose) goes to the one training entry point in a child process, as ``itkm train`` would run
    it -- the workspace's saved settings, checked with the lineage before config.toml is written;
    the child holds the writer lock meanwhile (``itkm_engine.child_job``).  Then a refreshed
    session with the settings the run saved."""
    from itkm_engine.child_job import run_child
    from itkm_engine.errors import ItkmError

    try:
        return run_child("train", session.ws, {"request": request.to_json()}, reporter=reporter, what="training",
                         nice=CHILD_NICE)
    finally:
        # whatever happened, the session must not serve a stale model or stale features
        import_engine()
        from itkm_engine.session import workspace_config

        try:
            session.cfg = workspace_config(session.ws)
        except ItkmError:
            pass  # a damaged config.toml: the session keeps its settings; training said why
        session.refresh()


def read_training_history(ws, session=None, *, reporter):
    """Rounds, epoch log, evaluation records, image count, each round's checkpoint key
    (evaluation records name the checkpoint by its content key), each round's measured duration
    (``{round: seconds}``, the trainer's ``round_time`` record) and the current model's key
    (``None`` without a session): the untrained model's evaluation is shown too."""
    rounds = ws.rounds()
    keys = {}
    current = None
    try:
        import_engine()  # torch: never imported by two threads at once
        from itkm_engine.model.checkpoint import checkpoint_key

        for r in rounds:
            if r.checkpoint and os.path.exists(r.checkpoint):
                keys[r.number] = checkpoint_key(r.checkpoint)
        if session is not None:
            current = session.checkpoint_key()
    except Exception:  # noqa: BLE001 - the history still shows without scores
        pass
    times = {int(m["round"]): float(m["values"]["seconds"]) for m in ws.metrics("round_time")
             if m.get("round") is not None and isinstance(m.get("values"), dict) and "seconds" in m["values"]}
    return rounds, ws.epoch_log(), ws.metrics("evaluation"), ws.image_count(), keys, times, current


def evaluate(session, *, reporter) -> dict:
    """mAP and Rank-k of the current model, every protocol and split (empty without person ids)."""
    return session.evaluate(reporter=reporter)


# -- Clusters, Identities, Gallery -------------------------------------------------------------------------

def projection(session, *, reporter):
    """The 2-D map: (image ids, their points, the image table of the same state)."""
    # a map cached for this checkpoint is read without importing UMAP (seconds of numba)
    xy = session.projection(reporter=reporter, compute=False)
    if xy is None:
        # UMAP (and any missing features) in a child process that fills the cache; a
        # read-only workspace computes here instead
        if compute_in_child(session, "projection", reporter=reporter.child(0.0, 0.95)):
            xy = session.projection(reporter=reporter.child(0.95, 1.0), compute=False)
        if xy is None:
            import_projection()  # umap/numba/faiss: never imported by two threads at once
            xy = session.projection(reporter=reporter.child(0.95, 1.0))
    ids = session.features().ids
    # the image table of the same state, so point rows never refer to an older table
    return np.asarray(ids, np.int64), np.asarray(xy, np.float32), session.images()


def cached_projection(session, *, reporter):
    """The 2-D map when the cache holds it (nothing is computed), else ``None``: what the
    Clusters view shows while training runs."""
    xy = session.projection(reporter=reporter, compute=False)
    if xy is None:
        return None
    return np.asarray(session.features().ids, np.int64), np.asarray(xy, np.float32), session.images()


def identities(session, *, reporter):
    """The current model's identities (computed once per checkpoint and the decisions)."""
    import_projection()  # faiss/sklearn: never imported by two threads at once
    return session.identities(reporter=reporter)


def named_identities(session, *, reporter):
    """The current identities and the operator's names of them: ``(table, {identity: (name, note)})``."""
    table = identities(session, reporter=reporter)
    return table, session.identity_names()


def read_camera_sites(ws, *, reporter) -> dict[str, str]:
    """Camera -> site (the Clusters view colours by it, the Gallery filters by it)."""
    return ws.camera_sites()


def identity_overview(session, *, reporter):
    """The Identities view's data: the identity table, one summary per identity, their names, and
    a lineage note per identity ("merged #40")."""
    table = identities(session, reporter=reporter)
    return table, session.identity_summary(), session.identity_names(), session.identity_history()


def _filter(filters: dict):
    from itkm_engine.session import QueryFilter

    return QueryFilter(**filters)


def query_image(session, image_id: int, k: int, filters: dict, rerank: bool, *, reporter):
    """Matches for an image of the workspace."""
    import_projection()  # faiss (re-ranking, big galleries): imported by one thread at a time
    return session.query_image(int(image_id), k=k, filters=_filter(filters), rerank=rerank)


def query_file(session, path: str, k: int, filters: dict, *, reporter):
    """Matches for an image file from outside the workspace."""
    import_projection()
    return session.query_file(path, k=k, filters=_filter(filters), reporter=reporter)


def query_text(session, text: str, k: int, filters: dict, *, reporter):
    """Matches for a description, through the model's CLIP text encoder."""
    import_projection()
    return session.query_text(text, k=k, filters=_filter(filters))


def review_queue(session, n: int, *, reporter):
    """The ``n`` pairs nearest the decision boundary, across scenarios first."""
    import_projection()
    return session.review_queue(n)
