// make bench, SAML part: how long the SP's response verification
// (pg_saml_acs_validate: parse, signature, all checks) takes on the nginx
// event loop, per assertion, over real logins against the samlify IdP.
// The gateway records it as saml_verify_us on each login.success event.
import { cleanupAll } from '../tests/integration/lib/harness.mjs';
import { startSamlEnv, toAcs } from '../tests/integration/gw/saml-env.mjs';

const N = Number(process.env.BENCH_SAML_LOGINS || 50);
const { e } = await startSamlEnv();
try {
  for (let i = 0; i < N; i++) {
    const { b, acs } = await toAcs(e, 'sam', `/sapp/b${i}`);
    const r = await b.request('POST', acs.action, { form: acs.fields });
    if (r.status !== 302) throw new Error(`login ${i}: ${r.status} ${r.body.slice(0, 200)}`);
  }
  const us = e.audit().filter((x) => x.type === 'login.success' && x.saml_verify_us)
    .map((x) => x.saml_verify_us).sort((a, b) => a - b);
  const q = (p) => us[Math.min(us.length - 1, Math.floor(p * us.length))];
  console.log(`SAML response verification on the event loop (${us.length} logins, RSA-2048, signed assertion):`);
  console.log(`  p50 ${(q(0.5) / 1000).toFixed(3)} ms   p95 ${(q(0.95) / 1000).toFixed(3)} ms   max ${(us[us.length - 1] / 1000).toFixed(3)} ms  (threshold for a thread pool: 1 ms)`);
} finally {
  await cleanupAll();
}
