#!/usr/bin/env bash
# From a fresh clone to a result, in one command (README, "Two commands"):
#
#   ./quickstart.sh         set up, then train a small T2L (~15 min on a 2-core CPU), show what one generated
#                           adapter changes on a held-out SNI task, and score base vs T2L there and on ARC-Easy
#   ./quickstart.sh test    set up, then run the test suite (what CI runs)
#
# Set-up = a venv in .venv, torch (CPU build), requirements, the model and the data in ./assets. Every step
# checks whether it is already done and skips it, so a second run (after Ctrl-C, a full disk, no network)
# goes on where the first one stopped. Settings, all optional (environment variables):
#   T2L_DESCRIPTION  the task description the demo adapter is generated from (default: the held-out task's first
#                    held-out description)
#   T2L_STEPS        training steps (default 60: the whole job took 17.5 min on one shared core here, 2026-12-07)
#   T2L_DATA_FROM    a local data folder laid out like shared/data (default ../shared/data when it exists;
#                    otherwise prepare.py downloads what it can from the original sources)
#   T2L_RUN          the run folder (default runs/quickstart); results go to out/quickstart/
set -euo pipefail
cd "$(dirname "$0")"
MODE="${1:-main}"
PY=.venv/bin/python
die() { echo "error: $*" >&2; exit 1; }
case "$MODE" in main | test) ;; *) die "unknown argument '$MODE': use ./quickstart.sh (main job) or ./quickstart.sh test" ;; esac
again="./quickstart.sh${1:+ $1}"
trap 'echo "error: interrupted; run $again again to go on from where it stopped" >&2; exit 130' INT TERM
step() { echo "== $*"; }

# ------------------------------------------------------------------ set-up (idempotent)
command -v python3 >/dev/null || die "python3 not found: install Python 3.10 or newer"
mkdir -p out
if ! "$PY" -m pip --version >/dev/null 2>&1; then  # none yet, or a half-made one (interrupted): made again
    step "venv: creating .venv"
    rm -rf .venv
    python3 -m venv .venv >out/setup.log 2>&1 || die "python3 -m venv failed (see out/setup.log; on Debian/Ubuntu: apt install python3-venv)"
fi
pip_install() {  # a one-line error instead of pip's page; the log keeps the details
    "$PY" -m pip install -q "$@" >>out/setup.log 2>&1 ||
        die "pip install $* failed: $(grep -E 'ERROR|rror:' out/setup.log | tail -1) (full log: out/setup.log)"
}
if ! "$PY" -c "import torch" 2>/dev/null; then
    step "torch: installing torch==2.13.0 (CPU build)"
    index=()  # the CPU wheel index where it is reachable (PyPI's plain torch is the multi-GB CUDA build)
    if python3 -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', timeout=5)" 2>/dev/null; then
        index=(--extra-index-url https://download.pytorch.org/whl/cpu)
    fi
    pip_install "${index[@]}" torch==2.13.0
fi
reqs=(requirements.txt)
[ "$MODE" = test ] && reqs+=(requirements-test.txt)
for r in "${reqs[@]}"; do
    stamp=".venv/.t2l-$r.sha256"
    if [ "$(sha256sum "$r" | cut -d' ' -f1)" != "$(cat "$stamp" 2>/dev/null)" ]; then
        step "requirements: installing $r"
        pip_install -r "$r"
        sha256sum "$r" | cut -d' ' -f1 >"$stamp"
    fi
done
DATA_FROM="${T2L_DATA_FROM:-}"
[ -z "$DATA_FROM" ] && [ -d ../shared/data ] && DATA_FROM=../shared/data
step "assets: model and data into ./assets${DATA_FROM:+ (data from $DATA_FROM)}"
"$PY" prepare.py ${DATA_FROM:+--data-from "$DATA_FROM"}

# ------------------------------------------------------------------ the tests
if [ "$MODE" = test ]; then
    step "tests"
    T2L_REQUIRE_ASSETS=1 exec "$PY" -m pytest -q tests
fi

# ------------------------------------------------------------------ the main job
[ -f assets/data/tasks/splits.json ] && [ -d assets/data/sni ] ||
    die "training needs the SNI task files and task descriptions, which prepare.py cannot download: set T2L_DATA_FROM=DIR (a folder laid out like shared/data)"
RUN="${T2L_RUN:-runs/quickstart}"
STEPS="${T2L_STEPS:-60}"
RES=out/quickstart
mkdir -p "$RES"
done_steps=$(sed -n 's/^step-0*\([0-9][0-9]*\)$/\1/p' "$RUN/latest" 2>/dev/null || true)
if [ "${done_steps:-}" = "$STEPS" ]; then
    step "train: $RUN already holds the step-$STEPS checkpoint, skipping"
else
    step "train: T2L small, $STEPS steps, into $RUN (resumes an interrupted run; loss plot: $RUN/loss.svg)"
    # 4 examples of each held-out task for the validation loss, 4 times a run: the curve costs ~1 min of 15
    "$PY" train.py --size small --steps "$STEPS" --out "$RUN" --resume --log-every 10 \
        --eval-every $(((STEPS + 3) / 4)) --val-examples 4
fi

# the first held-out SNI task (never trained on), its first 3 inputs, and the description of the demo adapter
TASK=$("$PY" -c "import json; print(json.load(open('assets/data/tasks/splits.json'))['heldout'][0])")
DESC="${T2L_DESCRIPTION:-$("$PY" -c "import json, sys; print(json.load(open('assets/data/tasks/eval_descriptions.json'))['eval_descriptions'][sys.argv[1]][0])" "$TASK")}"
mapfile -d '' INPUTS < <("$PY" -c "import json, sys; [print(i['input'], end='\0') for i in json.load(open(sys.argv[1]))['instances'][:3]]" "assets/data/sni/$TASK.json")
prompts=()
for x in "${INPUTS[@]}"; do prompts+=(--prompt "$x"); done
step "demo: held-out task $TASK, adapter from: $DESC"
"$PY" t2l.py --ckpt "$RUN" "$DESC" "${prompts[@]}" --max-new-tokens 48

# scores: base vs T2L on the held-out task (ROUGE-L, the demo's description) and on ARC-Easy (cloze, its 3
# held-out descriptions); a result already computed for this checkpoint and description is kept
ckpt="$RUN/$(cat "$RUN/latest")/hypernet.safetensors"
tag="$(sha256sum "$ckpt" | cut -c1-8)"  # the T2L results belong to this checkpoint (and description)
dtag="$tag-$(printf '%s' "$DESC" | sha256sum | cut -c1-8)"
score() {  # score FILE ARGS...: eval.py unless FILE exists
    local file="$1"; shift
    if [ -f "$file" ]; then echo "   $file present, skipping"; else "$PY" eval.py "$@" --out "$file"; fi
}
step "scores: $TASK (first 40 instances) and ARC-Easy (first 200 questions), base vs T2L"
score "$RES/sni-base.json" --task "sni:$TASK" --limit 40
score "$RES/sni-t2l-$dtag.json" --task "sni:$TASK" --limit 40 --t2l "$RUN" --description "$DESC"
score "$RES/arc_easy-base.json" --task arc_easy --limit 200
score "$RES/arc_easy-t2l-$tag.json" --task arc_easy --limit 200 --t2l "$RUN"
"$PY" plot.py bars "$RES/sni-base.json" "$RES/sni-t2l-$dtag.json" "$RES/arc_easy-base.json" "$RES/arc_easy-t2l-$tag.json" \
    --out "$RES/scores.svg"
step "done: loss curves $RUN/loss.svg, scores $RES/scores.svg"
