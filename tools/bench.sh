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
echo
echo "== reconciliation end to end (provgated + slapd, no-op; BENCH_RECON_N, default 100000)"
node tools/bench_recon_e2e.mjs
echo
echo "== leave -> disabled in SCIM, PostgreSQL and LDAP (BENCH_LEAVE_N, default 100)"
node tools/bench_leave.mjs
PROVGATE_MODULE="$top/build/ngx_http_provgate_module.so" node tools/bench_saml.mjs
PROVGATE_MODULE="$top/build/ngx_http_provgate_module.so" node tools/bench_outbox.mjs
PROVGATE_MODULE="$top/build/ngx_http_provgate_module.so" exec node tools/bench.mjs
