"""Time left (issue 18, section 2): one estimator in the engine (itkm_engine/eta.py) that the CLI
and the app both show, built from measured per-part costs, never shown before it has a basis,
never rising within a part; a round's one duration (log, summary, Rounds table); the part bar's
own fraction; "Resume round N" resumes round N."""

from __future__ import annotations

import re

import pytest

from helpers.workspaces import copy_ws, use_preset
from itkm_engine.eta import Eta, Part, format_duration, round_plan
from itkm_engine.trainer import ROUND_SPANS

EPOCHS = {"stage1": 4, "stage2": 4, "stage3": 2}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _run_round(eta: Eta, clock: Clock, costs: dict[str, float], *, round_span=(0.0, 1.0), steps: int = 40):
    """Feed ``eta`` a round whose parts take ``costs`` seconds (each part advancing evenly);
    returns [(part, seconds left shown)] per update."""
    out = []
    a, b = round_span
    for name in ("extract", "stage1", "stage2", "stage3", "final"):
        lo, hi = ROUND_SPANS[name]
        for i in range(steps):  # the part's end is the next part's start
            f = a + (b - a) * (lo + (hi - lo) * i / steps)
            clock.t += costs[name] / steps if i else 0.0
            out.append((name, eta.update(min(f, 0.9999))))
        clock.t += costs[name] / steps
    return out


def test_first_round_shows_nothing_until_a_stage_one_epoch_is_measured_then_never_rises_within_a_part():
    clock = Clock()
    eta = Eta(clock=clock)
    eta.set_plan(round_plan(1, EPOCHS, ROUND_SPANS, history=None, n_images=1000))
    # a busy machine: Stage I 400 s, II 60 s, III 300 s, the final extraction 90 s
    shown = _run_round(eta, clock, {"extract": 50, "stage1": 400, "stage2": 60, "stage3": 300, "final": 90})
    s1 = [v for p, v in shown if p == "stage1"]
    # nothing during the extraction and the first Stage I epoch (a quarter of the stage): no basis
    assert all(v is None for p, v in shown if p == "extract")
    assert all(v is None for v in s1[:10]) and all(v is not None for v in s1[11:])
    for part in ("stage1", "stage2", "stage3", "final"):
        values = [v for p, v in shown if p == part and v is not None]
        assert values == sorted(values, reverse=True), (part, values)
    # once Stage I is measured the estimate is within a factor of two of the truth at every point
    truth_after_s1 = 60 + 300 + 90
    first_s2 = next(v for p, v in shown if p == "stage2")
    assert 0.5 * truth_after_s1 < first_s2 < 2.0 * truth_after_s1


def test_a_later_round_starts_from_the_previous_rounds_part_times_and_follows_a_busier_machine():
    history = {"parts": {"extract": 50.0, "stage1": 400.0, "stage2": 60.0, "stage3": 300.0, "final": 90.0},
               "epochs": EPOCHS, "images": 1000, "seconds": 900.0}
    clock = Clock()
    eta = Eta(clock=clock)
    plan = round_plan(1, EPOCHS, ROUND_SPANS, history=history, n_images=1000, resumed=False)
    eta.set_plan(plan)
    # the same work, everything 1.5x slower (another job took a core)
    costs = {"extract": 0.0, "stage1": 600, "stage2": 90, "stage3": 450, "final": 135}
    shown = _run_round(eta, clock, costs)
    s1 = [v for p, v in shown if p == "stage1"]
    assert all(v is not None for v in s1), "the previous round is a basis from the first moment"
    first = s1[0]
    assert first == pytest.approx(400 + 60 + 300 + 90, rel=0.05)  # the history, before any evidence
    # by Stage II the slower machine is measured: the estimate is the truth within 25 %
    first_s2 = next(v for p, v in shown if p == "stage2")
    assert first_s2 == pytest.approx(90 + 450 + 135, rel=0.25)
    for part in ("stage1", "stage2", "stage3", "final"):
        values = [v for p, v in shown if p == part]
        assert values == sorted(values, reverse=True), (part, values)


def test_plan_scales_the_history_to_this_rounds_images_and_epochs():
    history = {"parts": {"stage1": 400.0, "stage2": 60.0, "stage3": 300.0, "final": 90.0},
               "epochs": {"stage1": 4, "stage2": 4, "stage3": 2}, "images": 1000}
    parts = {p.name: p for p in round_plan(1, {"stage1": 8, "stage2": 4, "stage3": 2}, ROUND_SPANS, history, 2000)}
    assert parts["stage1"].expected_s == pytest.approx(400 * 2 * 2)
    assert parts["final"].expected_s == pytest.approx(90 * 2)
    assert parts["extract"].expected_s is None  # the first extraction of a job: measured as it runs
    two = round_plan(2, EPOCHS, ROUND_SPANS, None, 1000)
    assert [p.expected_s for p in two if p.name == "extract"] == [None, 0.0]  # round 2 starts from a cache
    assert two[0].lo == 0.0 and two[-1].hi == pytest.approx(1.0) and two[5].lo == pytest.approx(0.5)


def test_eta_refuses_a_part_without_basis():
    clock = Clock()
    eta = Eta(clock=clock)
    eta.set_plan([Part("a", 0.0, 0.5), Part("b", 0.5, 1.0)])  # "b": no history, no proxy
    for i in range(1, 50):
        clock.t = i
        assert eta.update(0.01 * i) is None


# -- end to end: the trainer's events, the CLI line, the stored duration ---------------------------------

def _train_collect(ws_path, rounds=1, cancel_at=None):
    from itkm_engine.config import preset
    from itkm_engine.progress import Reporter
    from itkm_engine.trainer import train
    from itkm_engine.workspace import Workspace

    events, logs = [], []
    rep = Reporter(events.append, lambda m: logs.append(m.text), job="train")
    if cancel_at is not None:
        def on_event(e, _rep=rep):
            events.append(e)
            if cancel_at(e):
                _rep.cancel.cancel()
        rep.on_event = on_event
    with Workspace.open(ws_path) as ws:
        results = train(ws, preset("tiny"), rounds=rounds, reporter=rep)
        records = ws.metrics("round_time")
    return events, logs, results, records


def test_trainer_events_carry_part_fractions_and_the_engines_time_left(small_ws_template, tmp_path):
    ws = copy_ws(small_ws_template, tmp_path / "ws")
    use_preset(ws)
    events, logs, results, records = _train_collect(ws)
    by_part: dict[str, list[float]] = {}
    for e in events:
        if e.part:
            by_part.setdefault(e.part, []).append(e.part_fraction)
    assert {"stage1", "stage2", "stage3", "final"} <= set(by_part)
    for part, fr in by_part.items():  # each part's bar only moves forward (it jumped 90 -> 25 -> 50)
        assert fr == sorted(fr), part
    # the extraction inside a stage is a sub-step of that stage, not a stage of its own
    assert any(e.part in ("stage2", "stage3") and e.stage == "extract" for e in events)
    # one duration: the log line, the result, the stored record
    (rec,) = records
    assert results[0].seconds == pytest.approx(rec["values"]["seconds"])
    assert f"round 1 done in {format_duration(rec['values']['seconds'])}" in logs
    assert set(rec["values"]["parts"]) >= {"stage1", "stage2", "stage3", "final"}
    # round 1 of a fresh workspace: no time left before a Stage I epoch was measured
    first_s1 = [e for e in events if e.part == "stage1"]
    assert first_s1[0].eta_s is None
    # round 2 starts from round 1's times: a time left from its first event on
    events2, *_ = _train_collect(ws)
    timed = [e for e in events2 if e.fraction is not None and e.fraction < 1 and e.part and e.part != "extract"]
    assert timed and all(e.eta_s is not None for e in timed)
    for part in ("stage1", "stage2", "stage3"):
        values = [e.eta_s for e in timed if e.part == part]
        assert values == sorted(values, reverse=True), (part, values)


def test_resume_round_resumes_it_when_stopped_before_its_first_epoch(small_ws_template, tmp_path):
    """Stop during round N's first epoch (no saved epoch yet): Resume round N runs round N again,
    not a round N+1 beside a cancelled N."""
    from itkm_engine.errors import Cancelled
    from itkm_engine.workspace import Workspace

    ws = copy_ws(small_ws_template, tmp_path / "ws")
    use_preset(ws)
    with pytest.raises(Cancelled):
        _train_collect(ws, cancel_at=lambda e: e.part == "stage1" and e.epoch is not None)
    with Workspace.open(ws, readonly=True) as w:
        assert [(r.number, r.status) for r in w.rounds()] == [(1, "cancelled")]
        assert not (w.checkpoints_dir / "progress.pt").exists()
    _, logs, results, _ = _train_collect(ws)
    assert [r.round for r in results] == [1]
    with Workspace.open(ws, readonly=True) as w:
        assert [(r.number, r.status) for r in w.rounds()] == [(1, "done")]
    assert any(re.search(r"round 1 was stopped before its first epoch", t) for t in logs)


def test_cli_progress_line_shows_the_part_and_the_engines_time_left(capsys):
    from itkm_engine.cli import ConsoleReporter
    from itkm_engine.progress import ProgressEvent

    rep = ConsoleReporter("train")
    rep._tty = False
    rep._event(ProgressEvent(job="train", fraction=0.30, eta_s=420.0, round=2, part="stage1", part_fraction=0.6,
                             stage="extract", step=640, steps=1730))
    rep._last = 0.0
    rep._event(ProgressEvent(job="train", fraction=0.31, eta_s=None, round=2, part="stage1", stage="knn"))
    err = capsys.readouterr().err.splitlines()
    assert "round 2  Stage I  embedding  640/1730  about 7 min left" in err[0]
    assert "clustering: neighbours" in err[1] and "time left: not known yet" in err[1]
