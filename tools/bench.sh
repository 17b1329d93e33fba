#!/usr/bin/env bash
# make bench: see tools/bench.mjs. Results go to stdout; record them in
# docs/performance.md.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
echo "policy evaluation (10,000 policies, 1,000 roles):"
"$top/build/bench_policy" 200000 100
echo
echo "== reconciliation compare (no-op, 100000 accounts)"
"$top/build/bench_recon" 100000
PROVGATE_MODULE="$top/build/ngx_http_provgate_module.so" node tools/bench_saml.mjs
PROVGATE_MODULE="$top/build/ngx_http_provgate_module.so" node tools/bench_outbox.mjs
PROVGATE_MODULE="$top/build/ngx_http_provgate_module.so" exec node tools/bench.mjs
