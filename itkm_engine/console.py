"""What the ``itkm`` command prints: the progress line (:class:`ConsoleReporter`), tables, JSON,
and text made safe for a terminal (:func:`shown`).  The command's parser and its sub-commands are
in ``cli.py``; the torchrun entry point (``train.py``) reports through the same line."""

from __future__ import annotations

import contextlib
import json
import sys
import time

from .eta import format_eta
from .progress import LogMessage, ProgressEvent, Reporter

__all__ = ["PART_NAMES", "STEP_NAMES", "ConsoleReporter", "shown", "print_table", "json_out"]

#: How the progress line names a job's part (``ProgressEvent.part``) and its sub-step (``stage``).
PART_NAMES = {"extract": "features", "stage1": "Stage I", "stage2": "Stage II", "stage3": "Stage III",
              "final": "new model's features"}
STEP_NAMES = {"extract": "embedding", "knn": "clustering: neighbours", "encoding": "clustering: k-reciprocal",
              "jaccard": "clustering: Jaccard", "dbscan": "clustering: DBSCAN"}


# -- the progress line -------------------------------------------------------------------------------------
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
        part = PART_NAMES.get(e.part, e.part)
        step = STEP_NAMES.get(e.stage, "" if e.stage in (e.part, "done") else e.stage)
        if part:
            parts.append(part)
        if e.epoch is not None and e.epochs:
            parts.append(f"epoch {e.epoch + 1}/{e.epochs}")
        if step:
            parts.append(step)
        if e.step is not None and e.steps:
            parts.append(f"{e.step}/{e.steps}")
        if e.losses:
            parts.append(" ".join(f"{k}={v:.3f}" for k, v in list(e.losses.items())[:4]))
        if e.fraction is not None and e.fraction < 1:
            # itkm_engine/eta.py: the same estimate the app shows; none until it has a basis
            parts.append(f"{format_eta(e.eta_s)} left" if e.eta_s is not None else "time left: not known yet")
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


def json_out(obj) -> None:
    """``obj`` as indented JSON on stdout (what ``--json`` prints)."""
    print(json.dumps(obj, indent=2, default=str))
