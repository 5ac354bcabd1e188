#!/usr/bin/env bash
# Do the kernels compile for sm_90 under the triton versions pyproject.toml admits?
#
#   bash bench/triton_versions.sh [VERSION ...]      # default: 3.2.0 3.4.0 3.6.0
#
# For each version: `pip install --no-deps --target $DIR/triton-<v> triton==<v>` (skipped when
# that folder already holds it; 5-10 s from the local registry), then the no-GPU sm_90 compile
# tests with that triton first on PYTHONPATH (the tests compile in a subprocess without
# TRITON_INTERPRET, which inherits PYTHONPATH), each version with a fresh Triton cache so the
# compile times are cold. Prints one summary line per version (install s, test s, pytest exit
# code, the distinct error lines) and writes the logs to $LOGS.
#
# Environment: PYTHON (default: python), TRITON_VERSIONS_DIR (default: /tmp), LOGS (default:
# /tmp/triton-versions-logs), TEST_SECONDS (default: 900, per version).
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DIR=${TRITON_VERSIONS_DIR:-/tmp}
LOGS=${LOGS:-/tmp/triton-versions-logs}
TEST_SECONDS=${TEST_SECONDS:-900}
VERSIONS=("$@")
(( ${#VERSIONS[@]} )) || VERSIONS=(3.2.0 3.4.0 3.6.0)
TESTS=(
  tests/test_kernel_compile.py::test_kernels_compile_for_sm90
  tests/test_compile.py::test_seed_pointer_kernel_variants_compile_for_sm90
  tests/test_gumbel_topk.py::test_kernels_compile_for_h100
  tests/test_relaxed_bernoulli.py::test_kernels_compile_for_h100
  tests/test_estimators.py::test_kernel_compiles_for_sm90
)
mkdir -p "$LOGS"
STATUS=0
for v in "${VERSIONS[@]}"; do
  target="$DIR/triton-$v"
  t0=$(date +%s)
  if ! PYTHONPATH="$target" "$PY" -c "import sys, triton; sys.exit(triton.__version__ != '$v')" 2>/dev/null; then
    rm -rf "$target"
    if ! "$PY" -m pip install --no-deps --target "$target" "triton==$v" > "$LOGS/install-$v.log" 2>&1; then
      echo "triton $v: install failed ($(tail -1 "$LOGS/install-$v.log"))"
      STATUS=1
      continue
    fi
  fi
  t1=$(date +%s)
  rm -rf "$target/.triton-cache"
  PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" TRITON_CACHE_DIR="$target/.triton-cache" \
    timeout "$TEST_SECONDS" "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" > "$LOGS/tests-$v.log" 2>&1
  rc=$?
  t2=$(date +%s)
  (( rc == 0 )) || STATUS=1
  echo "triton $v: install $(( t1 - t0 ))s, compile tests $(( t2 - t1 ))s, pytest rc $rc: $(tail -1 "$LOGS/tests-$v.log")"
  # The distinct error lines of the compile subprocesses (the tests' own AssertionError line
  # only wraps the subprocess's stderr, so it shows when nothing else does).
  # Root causes may be printed as repr, e.g. AttributeError("..."), under a CompilationError.
  # A native LLVM/MLIR assertion aborts the subprocess; its "file.cpp:line: ... Assertion `...'
  # failed." line is the root cause then (the stderr line before it names the variant).
  errors=$( { grep -hoE "^E? *[A-Za-z_.]*(Error|Exception)(: |\().{0,200}" "$LOGS/tests-$v.log" | sed 's/^E *//'
              grep -hoE "[A-Za-z0-9_]+\.cpp:[0-9]+: .*Assertion \`.{0,160}' failed" "$LOGS/tests-$v.log" \
                | sed -E 's/^([A-Za-z0-9_]+\.cpp:[0-9]+): .*(Assertion .*)/native abort at \1: \2/'
              grep -B1 -E "\.cpp:[0-9]+: .*Assertion \`" "$LOGS/tests-$v.log" | grep -oE "compiling .{0,200}" \
                | sed 's/^/  while /'; })
  [ -n "$errors" ] || continue  # (a here-string of nothing would print one empty line)
  { grep -v "^AssertionError" <<< "$errors" || grep "^AssertionError" <<< "$errors"; } | sort | uniq -c | sort -rn \
    | head -8 | sed 's/^/    /'
done
echo "logs: $LOGS"
exit $STATUS
