#!/usr/bin/env bash
# Run every cmocka unit-test binary in DIR; print a line per binary and
# record "<passed> <failed>" in DIR/.summary. Exit 1 on any failure.
set -uo pipefail
dir=$1
pass=0 fail=0 rc=0
for t in "$dir"/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    out=$("$t" 2>&1); code=$?
    p=$(grep -oE '^\[  PASSED  \] [0-9]+' <<<"$out" | awk '{s+=$4} END {print s+0}')
    f=$(grep -oE '^\[  FAILED  \] [0-9]+' <<<"$out" | awk '{s+=$4} END {print s+0}')
    if [ "$code" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    pass=$((pass + p)); fail=$((fail + f))
    if [ "$code" -ne 0 ]; then
        rc=1
        echo "FAIL $name ($p passed, $f failed)"
        grep -E '^\[  (FAILED|ERROR)|error|Error|ERROR|runtime error|Sanitizer' <<<"$out" | head -20
    else
        echo "ok   $name ($p passed)"
    fi
done
echo "$pass $fail" >"$dir/.summary"
echo "unit ($dir): $pass passed, $fail failed"
exit $rc
