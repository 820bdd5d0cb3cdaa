#!/usr/bin/env bash
# Virtualenvs of the peer libraries for benchmarks/ctr_bench.py, outside the project's dependencies:
#   .bench-venvs/deepctr   DeepCTR 0.9.4 on TensorFlow with tf-keras (TF_USE_LEGACY_KERAS=1)
#   .bench-venvs/fuxictr   FuxiCTR 2.3.10 on PyTorch (CPU), polars < 2
# and of the sentence-transformers peer of benchmarks/esci_bench.py (benchmarks/peers/st_finetune.py):
#   .bench-venvs/st        sentence-transformers[train] 6.3.0 on torch 2.13.0 (CPU), transformers 5.25.0, datasets
# Usage: benchmarks/peers/setup_venvs.sh [deepctr] [fuxictr] [st]   (no argument: deepctr fuxictr;
#        BENCH_VENVS=/tmp/x puts them elsewhere)
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
    fuxictr) "$pip" install -q "torch==2.13.0"  # PyPI's 2.13.0 wheel is the CPU build; unpinned pulls CUDA
             "$pip" install -q "fuxictr==2.3.10" "polars<2" "torch==2.13.0" pandas pyarrow scikit-learn ;;
    st) # the CPU wheel index first; PyPI's torch 2.13.0 wheel is the fallback where that index is unreachable
        "$pip" install -q --retries 1 --timeout 20 --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
          || "$pip" install -q "torch==2.13.0"
        "$pip" install -q "sentence-transformers[train]==6.3.0" "transformers==5.25.0" "torch==2.13.0" \
          "accelerate==1.16.0" "datasets==5.2.0" numpy ;;
    *) echo "unknown peer $lib (deepctr, fuxictr, st)"; exit 2 ;;
  esac
  touch "$VENVS/$lib/.ok"
  echo "$VENVS/$lib: installed"
done
