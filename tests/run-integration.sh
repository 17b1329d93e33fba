#!/usr/bin/env bash
# Run the integration tests (node:test) against a real nginx loading MODULE,
# real redis-server and the real peers in tests/peers. Records
# "<passed> <failed>" in build/results/integration[-asan].summary.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
module=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
tag=integration
[ -n "${PROVGATE_ASAN:-}" ] && tag=integration-asan
mkdir -p "$top/build/results"
log="$top/build/results/$tag.log"
export PROVGATE_MODULE="$module"
if [ -n "${PROVGATE_ASAN:-}" ]; then
    export PROVGATE_NGINX_PRELOAD=$(gcc -print-file-name=libasan.so)
fi
cd "$top"
files=$(ls tests/integration/*.test.mjs 2>/dev/null)
if [ -z "$files" ]; then
    echo "integration: no tests found" >&2
    echo "0 1" >"$top/build/results/$tag.summary"
    exit 1
fi
node --test --test-concurrency=1 --test-reporter=spec --test-reporter-destination=stdout \
     --test-reporter=tap --test-reporter-destination="$log.tap" $files 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
pass=$(grep -E '^# pass ' "$log.tap" | awk '{print $3}' | tail -1)
fail=$(grep -E '^# fail ' "$log.tap" | awk '{print $3}' | tail -1)
pass=${pass:-0}; fail=${fail:-0}
if [ "$code" -ne 0 ] && [ "$fail" -eq 0 ]; then fail=1; fi
echo "$pass $fail" >"$top/build/results/$tag.summary"
echo "$tag: $pass passed, $fail failed"
exit $code
