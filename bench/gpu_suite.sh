#!/usr/bin/env bash
# One GPU session, one command, one folder: the GPU correctness tests on the real device
# (compiled kernels, no interpreter), then the benchmark suite.
#
#   bash bench/gpu_suite.sh [OUT_DIR]        # default bench/results/gpu-<UTC stamp>/
#
# Fits in 8 minutes on an H100 (SUITE_SECONDS, default 460, is the whole run's budget: the
# tests get at most TEST_SECONDS, default 180; the benchmark gets what is left and stops
# starting new cases in time to write its results; building the CUDA C++ twin, when no installed
# extension provides it, gets at most TWIN_SECONDS, default 240, before the tests). Needs no
# network: it installs the checkout in place (--no-deps, --no-build-isolation) into the Python
# that is already there.
# After the tests, when the twin's GPU tests passed: python -m bench.twin --measure and
# --update-dispatch (at most TWIN_MEASURE_SECONDS, default 120), which rewrites the measured table of
# fused_gumbel/_twin_dispatch.py (the default CUDA implementation per shape class under auto).
# Writes into OUT_DIR: env.txt, pip-install.log, twin-build.log, pytest-gpu.log/.xml, twin-measure.log,
# twin-measured-<date>.json, bench.log, cuda-<date>.{json,md,png}, summary.txt; and copies the JSONs
# to bench/results/.
set -u -o pipefail
START=$(date +%s)
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu-$(date -u +%Y%m%d-%H%M%S)}
PY=${PYTHON:-python}
SUITE_SECONDS=${SUITE_SECONDS:-460}
TEST_SECONDS=${TEST_SECONDS:-180}
mkdir -p "$OUT"
# Real kernels only: TRITON_INTERPRET=0 (not unset: tests/conftest.py defaults it to 1).
export TRITON_INTERPRET=0
unset FUSED_GUMBEL_BACKEND
elapsed() { echo $(( $(date +%s) - START )); }

{
  date -u
  nvidia-smi || true
  "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print(torch.cuda.get_device_name(0))"
  git rev-parse HEAD 2>/dev/null || echo "no git checkout"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# The CPU extension only: the CUDA twin is built below, under its own time limit.
FUSED_GUMBEL_BUILD_CUDA=0 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . > "$OUT/pip-install.log" 2>&1
PIP_RC=$?
echo "pip install -e . -> rc $PIP_RC ($(elapsed) s)"
PYFLAGS=()
if (( PIP_RC != 0 )); then
  # No installable build backend offline: assemble the installed layout (kernels/ is the
  # subpackage fused_gumbel.kernels) in a temporary folder; -P keeps the checkout's own
  # fused_gumbel/ (which lacks kernels/) off the front of sys.path.
  SITE=$(mktemp -d)
  cp -r fused_gumbel "$SITE/" && rm -rf "$SITE/fused_gumbel/kernels" && cp -r kernels "$SITE/fused_gumbel/kernels"
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  PYFLAGS=(-P)
  echo "using $SITE on PYTHONPATH instead of an install"
fi

# The CUDA C++ twin (kernels/csrc/cuda): the installed extension's kernels, else built once here
# into torch's extension cache, outside the tests' time; tests/gpu/test_gpu_cuda_twin.py then loads
# it (and is skipped rather than rebuilding when this step failed).
TWIN_SECONDS=${TWIN_SECONDS:-240}
timeout -k 10 "$TWIN_SECONDS" "$PY" "${PYFLAGS[@]}" -c \
  "from bench import twin; twin.cuda_op(verbose=True); print('CUDA twin ready')" > "$OUT/twin-build.log" 2>&1
TWIN_RC=$?
echo "CUDA twin build -> rc $TWIN_RC ($(elapsed) s)"
(( TWIN_RC != 0 )) && export FUSED_GUMBEL_TWIN_NO_BUILD=1

timeout -k 10 "$TEST_SECONDS" "$PY" "${PYFLAGS[@]}" -m pytest -m gpu tests -v -rfEs -p no:cacheprovider \
  --junitxml "$OUT/pytest-gpu.xml" 2>&1 | tee "$OUT/pytest-gpu.log"
TEST_RC=${PIPESTATUS[0]}
echo "pytest -m gpu -> rc $TEST_RC ($(elapsed) s)"

# The measured twin-vs-Triton table (fused_gumbel/_twin_dispatch.py's MEASURED block), only once the
# twin's GPU tests ran and passed: python -m bench.twin --measure times both per case, copies the
# JSON to bench/results/ and --update-dispatch rewrites the table from it (commit both). At most
# TWIN_MEASURE_SECONDS (default 120); it starts no new case in its last 30 s.
TWIN_MEASURE_SECONDS=${TWIN_MEASURE_SECONDS:-120}
MEASURE_RC=skipped
if (( TWIN_RC == 0 )) && grep -qE "test_gpu_cuda_twin.py::.* PASSED" "$OUT/pytest-gpu.log" \
    && ! grep -qE "test_gpu_cuda_twin.py::.* (FAILED|ERROR)" "$OUT/pytest-gpu.log"; then
  timeout -k 10 "$TWIN_MEASURE_SECONDS" "$PY" "${PYFLAGS[@]}" -m bench.twin --measure --out "$OUT" \
    --budget $(( TWIN_MEASURE_SECONDS - 30 )) 2>&1 | tee "$OUT/twin-measure.log"
  MEASURE_RC=${PIPESTATUS[0]}
  MEASURED_JSON=$(ls -t "$OUT"/twin-measured-*.json 2>/dev/null | head -1)
  if (( MEASURE_RC == 0 )) && [[ -n "$MEASURED_JSON" ]]; then
    cp "$MEASURED_JSON" bench/results/
    "$PY" "${PYFLAGS[@]}" -m bench.twin --update-dispatch "bench/results/$(basename "$MEASURED_JSON")" 2>&1 \
      | tee -a "$OUT/twin-measure.log"
    MEASURE_RC=${PIPESTATUS[0]}
  fi
else
  echo "twin not measured: its build or GPU tests did not pass (twin-build.log, pytest-gpu.log)"
fi
echo "python -m bench.twin --measure --update-dispatch -> rc $MEASURE_RC ($(elapsed) s)"

REMAINING=$(( SUITE_SECONDS - $(elapsed) ))
BUDGET=$(( REMAINING - 75 ))
(( BUDGET < 60 )) && BUDGET=60
timeout -k 10 $(( REMAINING > BUDGET + 20 ? REMAINING - 5 : BUDGET + 15 )) \
  "$PY" "${PYFLAGS[@]}" -m bench --device cuda --out "$OUT" --time-budget "$BUDGET" --rep-ms 50 --compile-budget 100 2>&1 | tee "$OUT/bench.log"
BENCH_RC=${PIPESTATUS[0]}
echo "python -m bench -> rc $BENCH_RC ($(elapsed) s)"
cp "$OUT"/cuda-*.json bench/results/ 2>/dev/null || true

{
  echo "pip_install_rc=$PIP_RC twin_build_rc=$TWIN_RC pytest_rc=$TEST_RC twin_measure_rc=$MEASURE_RC bench_rc=$BENCH_RC seconds=$(elapsed)"
  grep -E "passed|failed|error" "$OUT/pytest-gpu.log" | tail -1
  ls -1 "$OUT"
} | tee "$OUT/summary.txt"
(( TEST_RC == 0 && BENCH_RC == 0 ))
