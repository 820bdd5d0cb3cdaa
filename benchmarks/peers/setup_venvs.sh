#!/usr/bin/env bash
# Virtualenvs of the peer libraries for benchmarks/ctr_bench.py, outside the project's dependencies:
#   .bench-venvs/deepctr   DeepCTR 0.9.4 on TensorFlow with tf-keras (TF_USE_LEGACY_KERAS=1)
#   .bench-venvs/fuxictr   FuxiCTR 2.3.10 on PyTorch (CPU), polars < 2
# Usage: benchmarks/peers/setup_venvs.sh [deepctr] [fuxictr]   (BENCH_VENVS=/tmp/x puts them elsewhere)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENVS="${BENCH_VENVS:-$ROOT/.bench-venvs}"
PY="${PYTHON:-python3.11}"
libs=("$@"); [ ${#libs[@]} -eq 0 ] && libs=(deepctr fuxictr)
for lib in "${libs[@]}"; do
  if [ -x "$VENVS/$lib/bin/python" ] && [ -f "$VENVS/$lib/.ok" ]; then echo "$VENVS/$lib: ready"; continue; fi
  "$PY" -m venv "$VENVS/$lib"
  pip="$VENVS/$lib/bin/pip"
  "$pip" install -q --upgrade pip
  case "$lib" in
    deepctr) "$pip" install -q "deepctr==0.9.4" "tensorflow-cpu==2.16.*" "tf-keras==2.16.*" "numpy<2" "pandas<2.3" "pyarrow<18" scikit-learn ;;
    fuxictr) "$pip" install -q --extra-index-url https://download.pytorch.org/whl/cpu "fuxictr==2.3.10" "polars<2" \
               torch pandas pyarrow scikit-learn ;;
    *) echo "unknown peer $lib (deepctr, fuxictr)"; exit 2 ;;
  esac
  touch "$VENVS/$lib/.ok"
  echo "$VENVS/$lib: installed"
done
