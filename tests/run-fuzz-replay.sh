#!/bin/bash
# Replay every seed corpus through its fuzz target.
#
# usage: tests/run-fuzz-replay.sh DIR
#   DIR holds fuzz target binaries (build/fuzz-replay/fuzz_* from the ASan
#   replay driver, or build/fuzz/fuzz_* from libFuzzer). Each binary NAME is
#   run on tests/fuzz/corpus/NAME/. One line per target; exit status is
#   non-zero when any target crashes, reports a sanitizer error, or has no
#   corpus.
set -u
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: $0 DIR}
corpus_root="$here/fuzz/corpus"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

fail=0
found=0
for bin in "$dir"/fuzz_*; do
    [ -f "$bin" ] && [ -x "$bin" ] || continue
    found=1
    name=$(basename "$bin")
    corpus="$corpus_root/$name"
    if [ ! -d "$corpus" ] || [ -z "$(ls -A "$corpus" 2>/dev/null)" ]; then
        echo "FAIL $name: no seed corpus at tests/fuzz/corpus/$name"
        fail=1
        continue
    fi
    n=$(find "$corpus" -maxdepth 1 -type f | wc -l)
    log=$(mktemp)
    if "$bin" -runs=0 "$corpus" >"$log" 2>&1; then
        echo "ok   $name ($n inputs)"
    else
        echo "FAIL $name ($n inputs)"
        sed 's/^/    /' "$log" | tail -40
        fail=1
    fi
    rm -f "$log"
done
if [ "$found" = 0 ]; then
    echo "FAIL no fuzz_* binaries in $dir"
    exit 1
fi
exit $fail
