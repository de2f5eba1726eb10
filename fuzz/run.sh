#!/bin/sh
# run.sh - runs one libFuzzer target for CTest (see fuzz/CMakeLists.txt).
#
#   run.sh replay FUZZER CORPUS SEEDS REGRESSIONS ARTIFACTS   each seed and regression once
#   run.sh fuzz   FUZZER CORPUS SEEDS REGRESSIONS ARTIFACTS   fuzz for $FUZZ_SECONDS (30) s
#
# CORPUS is libFuzzer's working corpus (created; new inputs are written there); SEEDS and
# REGRESSIONS are read only (a missing directory is skipped). A crash input is saved in
# ARTIFACTS (crash-*, leak-*, timeout-*); once the bug is fixed, copy it into
# fuzz/regressions/<name>/ so that replay keeps checking it.
set -eu
[ $# -eq 6 ] || { echo "usage: $0 replay|fuzz FUZZER CORPUS SEEDS REGRESSIONS ARTIFACTS" >&2; exit 2; }
mode=$1 fuzzer=$2 corpus=$3 seeds=$4 regressions=$5 artifacts=$6
mkdir -p "$corpus" "$artifacts"
: "${ASAN_OPTIONS:=abort_on_error=1:detect_leaks=1}"
: "${UBSAN_OPTIONS:=print_stacktrace=1:halt_on_error=1}"
export ASAN_OPTIONS UBSAN_OPTIONS
# -timeout is libFuzzer's hang detector (wall clock, per input): far above what load on a
# shared machine can cause (fuzz_hrpc's own answer deadline is 60 s, below it).
opts="-timeout=120 -rss_limit_mb=2048 -artifact_prefix=$artifacts/"

case "$mode" in
  replay)
    # Individual files: libFuzzer runs each once and exits.
    files=$(find "$seeds" "$regressions" -type f ! -name '.*' 2>/dev/null || true)
    if [ -z "$files" ]; then
      echo "no inputs to replay"
      exit 0
    fi
    # shellcheck disable=SC2086
    exec "$fuzzer" $opts $files
    ;;
  fuzz)
    secs=${FUZZ_SECONDS:-30}
    set -- "$corpus" "$seeds"
    [ -d "$regressions" ] && set -- "$@" "$regressions"
    # shellcheck disable=SC2086
    exec "$fuzzer" $opts -max_total_time="$secs" -print_final_stats=1 "$@"
    ;;
  *)
    echo "usage: $0 replay|fuzz FUZZER CORPUS SEEDS REGRESSIONS ARTIFACTS" >&2
    exit 2
    ;;
esac
