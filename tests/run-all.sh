#!/usr/bin/env bash
# `make check`: unit tests, integration tests, the ASan/UBSan build of both,
# and the fuzz corpora replay. Prints one summary line "N passed, N failed".
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
rc=0
tests/run-unit.sh build/unit || rc=1
tests/run-integration.sh build/ngx_http_provgate_module.so || rc=1
tests/run-unit.sh build/unit-asan || rc=1
PROVGATE_ASAN=1 tests/run-integration.sh build/asan-module/ngx_http_provgate_module.so || rc=1
fuzz_out=$(tests/run-fuzz-replay.sh build/fuzz-replay 2>&1); fuzz_rc=$?
echo "$fuzz_out"
fp=$(grep -cE '^ok ' <<<"$fuzz_out"); ff=$(grep -cE '^(FAIL|fail|CRASH)' <<<"$fuzz_out")
if [ "$fuzz_rc" -ne 0 ]; then rc=1; [ "$ff" -gt 0 ] || ff=1; fi
mkdir -p build/fuzz-replay
echo "$fp $ff" >build/fuzz-replay/.summary
pass=0 fail=0
for s in build/unit/.summary build/unit-asan/.summary \
         build/results/integration.summary build/results/integration-asan.summary \
         build/fuzz-replay/.summary; do
    if [ -f "$s" ]; then
        read -r p f <"$s"
        pass=$((pass + p)); fail=$((fail + f))
    else
        echo "missing results: $s"; fail=$((fail + 1)); rc=1
    fi
done
echo
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ] || rc=1
exit $rc
