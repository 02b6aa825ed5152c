"""Wall time of the test suite -- README's second command, as written -- in a fresh clone, on a busy machine.

    python benchmarks/bench_suite.py                       # 3 runs, each in its own fresh clone, beside 2 busy loops
    python benchmarks/bench_suite.py --busy 0 --runs 1     # once, on an idle machine
    python benchmarks/bench_suite.py --out suite_idle      # results/suite_idle.json instead of results/suite.json

Why: issue 18 §5 asks the suite to pass in under 12 minutes on the 2-core development machine while
other work keeps it busy -- two busy loops (``yes > /dev/null``) beside it -- three times in a row.  A
user's machine is busy, and a suite that only passes fast when nothing else runs is slow for them.

Each run clones the repository's committed HEAD (uncommitted changes are not measured) into a new
temporary folder and runs ``pip install -e ".[test]" && pytest`` there, with ``--busy`` processes
that spin on the CPU started before it and killed after it.  Reported per run: the wall time of the
whole command (install included), pytest's own time, the counts pytest printed, the exit code and
the 1-minute load average at the end.  The log of each run is kept beside the JSON
(``results/<out>-run<N>.log``).

``pip install -e`` in a clone points this Python's ``itkm`` install at that clone; at the end the
editable install is pointed back at this checkout (``pip install -e . --no-deps``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: README's second command, as .ci/run runs it.
COMMAND = 'pip install -e ".[test]" && pytest'
#: Issue 18 §5: the whole command under 12 minutes.
TARGET_S = 12 * 60


def busy_loops(n: int) -> list[subprocess.Popen]:
    """``n`` processes that keep one core each busy (``yes > /dev/null``, as the issue measured)."""
    cmd = ["yes"] if shutil.which("yes") else [sys.executable, "-c", "while True: pass"]
    return [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for _ in range(n)]


def counts(log: str) -> dict[str, int]:
    """pytest's summary line: ``834 passed, 4 skipped, 15 warnings in 587.58s``."""
    lines = [ln for ln in log.splitlines() if re.search(r"\d+ (passed|failed|error)", ln) and " in " in ln]
    found = {}
    if lines:
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", lines[-1]):
            found[what.rstrip("s") if what.startswith("error") else what] = int(n)
    return found


def pytest_seconds(log: str) -> float | None:
    m = re.findall(r" in ([\d.]+)s(?: \(|\s*=*$)", log, flags=re.M)
    return float(m[-1]) if m else None


def one_run(index: int, busy: int, out: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="itkm-suite-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                              text=True, check=True).stdout.strip()
        loops = busy_loops(busy)
        try:
            start = time.monotonic()
            p = subprocess.run(["bash", "-c", COMMAND], cwd=clone, capture_output=True, text=True)
            wall = time.monotonic() - start
            load = os.getloadavg()[0]
        finally:
            for lp in loops:
                lp.kill()
                lp.wait()
    log = p.stdout + p.stderr
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out}-run{index}.log").write_text(log)
    c = counts(log)
    return {"run": index, "commit": head, "busy_loops": busy, "wall_s": round(wall, 1),
            "wall": f"{int(wall // 60)}:{int(wall % 60):02d}", "pytest_s": pytest_seconds(log),
            "passed": c.get("passed", 0), "failed": c.get("failed", 0) + c.get("error", 0),
            "skipped": c.get("skipped", 0), "rc": p.returncode, "load_1min_at_end": round(load, 2),
            "under_target": p.returncode == 0 and wall < TARGET_S}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs, each in a fresh clone (default 3)")
    ap.add_argument("--busy", type=int, default=2, help="busy loops beside the suite (default 2)")
    ap.add_argument("--out", default="suite", help="results/<OUT>.json (default suite)")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each run's row as it ends, also into a log file

    rows = []
    try:
        for i in range(1, args.runs + 1):
            rows.append(one_run(i, args.busy, args.out))
            print_table(rows[-1:], f"run {i} of {args.runs}")
    finally:  # the clone's `pip install -e` took this Python's `itkm`: give it back to this checkout
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(REPO), "--no-deps"],
                       check=False, capture_output=True)
    print_table(rows, f"README's second command in a fresh clone, {args.busy} busy loop(s) beside it "
                      f"(target: under {TARGET_S // 60} min, rc 0, every run)")
    met = bool(rows) and all(r["under_target"] for r in rows)
    print(f"\n{'MET' if met else 'MISS'}: {sum(r['under_target'] for r in rows)} of {len(rows)} runs "
          f"under {TARGET_S // 60} min and green")
    path = write_json(args.out, {"command": COMMAND, "target_s": TARGET_S, "busy_loops": args.busy,
                                 "runs": rows, "met": met})
    print(f"wrote {path}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
