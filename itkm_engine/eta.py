"""Time left for a job: the one estimator behind every "ETA" the CLI prints and the app shows.

A job's :class:`~itkm_engine.progress.Reporter` owns one :class:`Eta`; each progress update feeds
it the job's overall fraction and the result travels in ``ProgressEvent.eta_s`` (through the
training child process too), so the command line, the Training view and the status bar show the
same number.

Two bases, and nothing without one (``None``: "not known yet"):

* **A plan** (training): the job's parts (:class:`Part`: the round's first extraction, Stage I,
  II, III, the final extraction) with their spans of the overall fraction and what each costs.
  A part's cost is, in this order: what it took (finished); the previous round's measured time
  for it, scaled to this round's images and epochs and corrected by how the parts finished so
  far compared with their expectation (a busier machine); the same part measured earlier in this
  job (round 2 of a two-round run); or, for a part not measured anywhere yet, the per-epoch cost
  of a part that was (``like``) times a ratio measured on the demo (:data:`PART_COST_PRIOR`).
  Time left = the current part's rest (its expected cost blended with its own measured rate as
  it advances) + the costs of the parts after it.  A part with neither expectation nor one
  completed epoch of its own has no basis, and neither has the whole estimate.
* **No plan** (ingest, the 2-D map, exports): the rate of progress over the last
  :attr:`Eta.WINDOW_S` seconds, once the job has run :attr:`Eta.MIN_ELAPSED_S` and moved
  :attr:`Eta.MIN_FRACTION`; nothing while the fraction stands still.

Within one part the estimate never goes up (a new part may change it: it has a new basis).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["Part", "Eta", "PART_COST_PRIOR", "format_duration", "format_eta", "round_plan", "ROUND_PARTS"]

#: A round's parts and their spans of the round's progress (the trainer reports with these).
#: Stage spans come from :data:`itkm_engine.vocabulary.STAGE_LABELS`, inside 0.05..0.95.
ROUND_PARTS = ("extract", "stage1", "stage2", "stage3", "final")

#: Cost of one epoch of a part, relative to one Stage I epoch, for parts not measured yet (a
#: first round).  Measured on a quick-preset round of the two-site demo (1,730 crops, 2 busy
#: cores): a Stage I epoch (extraction, clustering, steps) 85 s; Stage II 110 s for 4 epochs (one
#: extraction in its preparation, then text steps only: 0.3 of a Stage I epoch each); a Stage III
#: epoch 106 s (a Stage I epoch plus the matching: 1.25); the final extraction of every crop 50-84 s
#: (0.6).
PART_COST_PRIOR = {"stage2": 0.3, "stage3": 1.25, "final": 0.6}


@dataclass(frozen=True)
class Part:
    """One part of a planned job."""

    name: str  # "extract" | "stage1" | "stage2" | "stage3" | "final"
    lo: float  # its span of the job's overall fraction
    hi: float
    units: int = 1  # epochs (a stage), 1 otherwise
    expected_s: float | None = None  # measured cost from an earlier run, scaled; None: not known
    like: str | None = None  # not known: cost per unit of this part (measured in this job) x ratio
    ratio: float = 1.0


def round_plan(rounds: int, epochs: dict[str, int], spans: dict[str, tuple[float, float]],
               history: dict | None = None, n_images: int | None = None, *, resumed: bool = False) -> list[Part]:
    """The parts of a training job of ``rounds`` rounds, spans in the job's own 0..1.

    ``epochs``: epochs per stage; ``spans``: each part's (lo, hi) of a round; ``history``: the
    last finished round's ``round_time`` record (``{"parts": {name: s}, "epochs": {...},
    "images": n}``) or ``None``.  The first round's first extraction has no expectation (it embeds
    what the feature cache lacks: everything, or only new images) unless the job resumes (then it
    is not run); later rounds start from the features the round before computed (cost 0)."""
    parts: list[Part] = []
    hist_parts = (history or {}).get("parts") or {}
    hist_epochs = (history or {}).get("epochs") or {}
    hist_images = (history or {}).get("images") or 0
    scale_img = (n_images / hist_images) if (n_images and hist_images) else 1.0
    for i in range(rounds):
        a, b = i / rounds, (i + 1) / rounds
        for name in ROUND_PARTS:
            lo, hi = spans[name]
            units = int(epochs.get(name, 1)) if name.startswith("stage") else 1
            if units <= 0:
                units = 1
            expected = None
            if name == "extract":
                # a job's first extraction embeds what the cache lacks (all, or only new images):
                # measured as it runs; later rounds start from the cache the round before filled
                expected = 0.0 if (i > 0 or resumed) else None
            elif name in hist_parts and hist_parts[name] is not None:
                then = int(hist_epochs.get(name, units) or units) if name.startswith("stage") else 1
                expected = float(hist_parts[name]) * units / max(then, 1) * scale_img
            elif name in PART_COST_PRIOR and hist_parts.get("stage1"):
                # not in the record (an older round's): its share of the recorded Stage I epochs
                unit = float(hist_parts["stage1"]) / max(int(hist_epochs.get("stage1", 1) or 1), 1)
                expected = unit * PART_COST_PRIOR[name] * units * scale_img
            like = "stage1" if name in PART_COST_PRIOR else None
            parts.append(Part(name, a + (b - a) * lo, a + (b - a) * hi, units, expected, like,
                              PART_COST_PRIOR.get(name, 1.0)))
    return parts


class Eta:
    """Seconds left of one job, from its progress updates (see the module's doc)."""

    WINDOW_S = 30.0  # no plan: the rate over this window
    MIN_ELAPSED_S = 5.0
    MIN_FRACTION = 0.03
    STALE_S = 8.0  # no plan: nothing while the fraction has not moved for this long
    MIN_PART_S = 2.0  # a part's own rate counts once it ran this long ...
    MIN_PART_FRACTION = 0.1  # ... and moved this much (or one whole unit: an epoch)

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.parts: list[Part] = []
        self.reset()

    def reset(self) -> None:
        self.t0: float | None = None
        self.f0 = 0.0
        self.samples: deque[tuple[float, float]] = deque()
        self.last_move: float | None = None
        self._start: dict[int, float] = {}
        self._end: dict[int, float] = {}
        self._shown: tuple[object, float] | None = None  # (part key, value) last returned

    def set_plan(self, parts: list[Part]) -> None:
        with self._lock:
            self.parts = sorted(parts, key=lambda p: p.lo)
            self._start, self._end, self._shown = {}, {}, None

    # -- feeding ---------------------------------------------------------------------------------
    def update(self, fraction: float | None, key: object = None) -> float | None:
        """The job's overall ``fraction`` now; returns seconds left, or ``None`` (no basis yet).
        ``key`` names the part without a plan (the value never rises while it stays the same)."""
        with self._lock:
            now = self.clock()
            if self.t0 is None:
                self.t0, self.f0 = now, fraction or 0.0
            if fraction is None:
                return None
            if fraction >= 1.0:
                return 0.0
            if not self.samples or fraction > self.samples[-1][1]:
                self.last_move = now
            self.samples.append((now, fraction))
            while len(self.samples) > 2 and self.samples[1][0] < now - self.WINDOW_S:
                self.samples.popleft()
            if self.parts:
                cur = self._advance(fraction, now, key)
                value = self._planned(fraction, now, cur)
                key = ("part", cur)
            else:
                value = self._windowed(now)
            return self._monotone(key, value)

    def _monotone(self, key, value: float | None) -> float | None:
        if value is None:
            return None
        if self._shown is not None and self._shown[0] == key:
            value = min(value, self._shown[1])
        self._shown = (key, value)
        return value

    # -- without a plan --------------------------------------------------------------------------
    def _windowed(self, now: float) -> float | None:
        f = self.samples[-1][1]
        if now - self.t0 < self.MIN_ELAPSED_S or f - self.f0 < self.MIN_FRACTION:
            return None
        if self.last_move is not None and now - self.last_move > self.STALE_S:
            return None
        t_a, f_a = self.samples[0]
        if now - t_a < 1.0 or f <= f_a:
            return None
        return (1.0 - f) / ((f - f_a) / (now - t_a))

    # -- with a plan -----------------------------------------------------------------------------
    def _advance(self, f: float, now: float, name: object = None) -> int:
        """Index of the part ``f`` lies in (at a boundary: the one the event names, ``name``);
        parts passed meanwhile end now (skipped ones: at once)."""
        cur = len(self.parts) - 1
        for i, p in enumerate(self.parts):
            if f < p.hi:
                cur = i
                break
        if cur > 0 and name is not None and self.parts[cur].name != name and self.parts[cur - 1].name == name \
                and abs(f - self.parts[cur - 1].hi) < 1e-9 and (cur - 1) not in self._end:
            cur -= 1  # the last event of a part ends exactly where the next one starts
        for i in range(cur):
            if i not in self._end:
                self._start.setdefault(i, now)
                self._end[i] = now
        self._start.setdefault(cur, now)
        return cur

    def _measured_unit_cost(self, name: str, now: float, f: float) -> float | None:
        """Seconds per unit of the latest part named ``name`` that has a basis in this job."""
        best = None
        for i, p in enumerate(self.parts):
            if p.name != name or i not in self._start:
                continue
            if i in self._end:
                dur = self._end[i] - self._start[i]
                if dur > 0:
                    best = dur / p.units
            else:
                local = (f - p.lo) / max(p.hi - p.lo, 1e-9)
                elapsed = now - self._start[i]
                if local >= min(1.0 / p.units, 1.0) - 1e-9 and elapsed >= self.MIN_PART_S and local > 0:
                    best = elapsed / (local * p.units)
        return best

    def _calibration(self) -> float:
        """Actual / expected over the finished parts that had an expectation (a busier machine)."""
        actual = expected = 0.0
        for i, p in enumerate(self.parts):
            if i in self._end and p.expected_s is not None and p.expected_s > 0:
                actual += self._end[i] - self._start[i]
                expected += p.expected_s
        if expected < self.MIN_PART_S:
            return 1.0
        return min(max(actual / expected, 1 / 3), 3.0)

    def _cost(self, i: int, now: float, f: float, cal: float) -> float | None:
        """Expected seconds of part ``i`` as a whole (not yet: measured, history, proxies)."""
        p = self.parts[i]
        if p.expected_s is not None:
            return p.expected_s * cal
        for j in range(i - 1, -1, -1):  # the same part in an earlier round of this job
            q = self.parts[j]
            if q.name == p.name and j in self._end and (self._end[j] - self._start[j]) > 0:
                return (self._end[j] - self._start[j]) / q.units * p.units
        if p.like is not None:
            unit = self._measured_unit_cost(p.like, now, f)
            if unit is not None:
                return unit * p.ratio * p.units
        return None

    def _planned(self, f: float, now: float, cur: int) -> float | None:
        cal = self._calibration()
        p = self.parts[cur]
        local = min(max((f - p.lo) / max(p.hi - p.lo, 1e-9), 0.0), 1.0)
        elapsed = now - self._start[cur]
        rate_left = None
        if elapsed >= self.MIN_PART_S and local >= min(self.MIN_PART_FRACTION if p.units == 1 else 1.0 / p.units, 1.0):
            rate_left = elapsed * (1.0 - local) / max(local, 1e-9)
        expected = self._cost(cur, now, f, cal)
        if expected is None and p.like is None and rate_left is None:
            return None
        expected_left = max(expected - elapsed, 0.0) if expected is not None else None
        if expected_left is not None and rate_left is not None:
            left = (1.0 - local) * expected_left + local * rate_left
        else:
            left = rate_left if rate_left is not None else expected_left
        if left is None:
            return None
        for j in range(cur + 1, len(self.parts)):
            c = self._cost(j, now, f, cal)
            if c is None:
                return None
            left += c
        return left


# -- how a time is said -------------------------------------------------------------------------------
def format_duration(seconds: float | None) -> str:
    """A measured duration: "12 min 44 s", "1 h 05 min", "38 s" (the log and the tables)."""
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def format_eta(seconds: float | None) -> str:
    """A time left as a person would say it: rounded, never falsely precise."""
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    if seconds < 10:
        return "a few seconds"
    if seconds < 60:
        return f"about {int(round(seconds / 10.0)) * 10} s"
    if seconds < 3600:
        return f"about {max(1, int(round(seconds / 60.0)))} min"
    return f"about {format_duration(round(seconds / 300.0) * 300)}"
