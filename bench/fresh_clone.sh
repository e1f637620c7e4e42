#!/usr/bin/env bash
# A fresh clone reproduces every tracked file: clone this repository, run the README's first command
# (`make repro`: install + the whole pipeline on the default data) and print `git status --porcelain`
# (nothing when git and dvc.lock hold only what any clone reproduces). Usage: bash bench/fresh_clone.sh [DIR]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$(mktemp -d /tmp/riskops-clone-XXXX)}
git clone -q "$src" "$dest"
cd "$dest"
start=$(date +%s)
make repro > make_repro.log 2>&1 || { tail -40 make_repro.log; exit 1; }
echo "make repro in a fresh clone ($dest): $(( $(date +%s) - start )) s"
status=$(git status --porcelain | grep -v '^?? make_repro.log$' || true)
echo "git status --porcelain: ${status:-(nothing)}"
[ -z "$status" ]
