#!/usr/bin/env bash
# From `git clone` to a served /score answer, and a fresh clone reproduces every tracked file: clone this repository,
# run the README's first command (`make repro`: install + the whole pipeline on the default data), print
# `git status --porcelain` (nothing when git and dvc.lock hold only what any clone reproduces), then serve the champion
# as the README says (`riskops-export`, `bentoml serve` on 127.0.0.1, a free port) and time one /score answer.
# Usage: bash bench/fresh_clone.sh [DIR]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$(mktemp -d /tmp/riskops-clone-XXXX)}
start=$(date +%s%N)
git clone -q "$src" "$dest"
cd "$dest"
make repro > make_repro.log 2>&1 || { tail -40 make_repro.log; exit 1; }
repro_done=$(date +%s%N)
echo "git clone + make repro in a fresh clone ($dest): $(( (repro_done - start) / 1000000000 )) s"
status=$(git status --porcelain | grep -v '^?? make_repro.log$' || true)
echo "git status --porcelain: ${status:-(nothing)}"

export PATH="$dest/.venv/bin:$PATH" BENTOML_HOME="$dest/.bentoml-bench" BENTOML_DO_NOT_TRACK=True
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
riskops-export > export.log 2>&1 || { cat export.log; exit 1; }
set -m  # the server and its workers in a process group of their own, stopped together on exit
bentoml serve bentos.service:RiskService --host 127.0.0.1 --port "$port" > serve.log 2>&1 &
server=$!
set +m
trap 'kill -- -$server 2>/dev/null || kill $server 2>/dev/null || true' EXIT
row=$(python -c 'import pandas as pd, yaml; p = yaml.safe_load(open("params.yaml"))["data"]; print(pd.read_parquet("data/split/test.parquet").drop(columns=[p["target"]]).head(1).to_json(orient="records"))')
for _ in $(seq 600); do
  answer=$(curl -sf -X POST "http://127.0.0.1:$port/score" -H 'Content-Type: application/json' -d "{\"applicants\": $row}" || true)
  [ -n "$answer" ] && break
  sleep 0.1
done
[ -n "$answer" ] || { tail -30 serve.log; exit 1; }
served=$(date +%s%N)
echo "first /score answer: $(echo "$answer" | cut -c1-160)..."
echo "riskops-export + bentoml serve to the first answer: $(( (served - repro_done) / 1000000 )) ms"
echo "git clone to a served /score answer: $(( (served - start) / 1000000000 )) s"
[ -z "$status" ]
