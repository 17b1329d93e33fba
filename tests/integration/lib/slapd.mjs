// A private OpenLDAP slapd for integration tests: slapd.conf in a temp dir
// (mdb backend; core, cosine, inetorgperson and nis schemas from
// /etc/ldap/schema; rootdn cn=admin,dc=example,dc=org), listening on
// 127.0.0.1 at a free port, seeded with ou=people, ou=groups (groupOfNames
// with a placeholder member, groupOfNames needs one) and ou=disabled.
// Stopped at the end of the test (and by the harness clean-up).
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { freePort, startProcess, tempDir } from './harness.mjs';

export const SUFFIX = 'dc=example,dc=org';
export const ROOTDN = `cn=admin,${SUFFIX}`;
export const ROOTPW = 's3cret-root-pw';
export const PEOPLE = `ou=people,${SUFFIX}`;
export const GROUPS = `ou=groups,${SUFFIX}`;
export const DISABLED = `ou=disabled,${SUFFIX}`;

const SLAPD = process.env.PG_SLAPD_BIN || '/usr/sbin/slapd';

/**
 * Start slapd; groups: group names to create below ou=groups; maxsize: the
 * mdb map size in bytes (default 32 MiB).
 * Returns {url, port, dir, ldif(text) (ldapmodify -a), modify(text)
 * (ldapmodify), del(dn), search(base, filter, attrs) -> LDIF text,
 * entry(uid) -> {attr: [values]} or null, bulkAdd(file) (stops slapd,
 * `slapadd -q` of an LDIF file of new entries, starts it again on the same
 * port: the fast way to load many entries, for benchmarks), stop()}.
 */
// slapd may accept connections a moment before it serves requests
async function ready(fn) {
  for (let i = 0; ; i++) {
    try {
      fn();
      return;
    } catch (e) {
      if (i >= 50) throw e;
      await new Promise((r) => { setTimeout(r, 100); });
    }
  }
}

export async function startSlapd({ t, groups = [], maxsize = 33554432 } = {}) {
  const dir = tempDir('pg-slapd-', t);
  fs.mkdirSync(path.join(dir, 'db'));
  const conf = [
    'include /etc/ldap/schema/core.schema',
    'include /etc/ldap/schema/cosine.schema',
    'include /etc/ldap/schema/inetorgperson.schema',
    'include /etc/ldap/schema/nis.schema',
    `pidfile ${dir}/slapd.pid`,
    `argsfile ${dir}/slapd.args`,
    'modulepath /usr/lib/ldap',
    'moduleload back_mdb',
    'database mdb',
    `maxsize ${maxsize}`,
    `suffix "${SUFFIX}"`,
    `rootdn "${ROOTDN}"`,
    `rootpw ${ROOTPW}`,
    `directory ${dir}/db`,
    'index objectClass eq',
    'index uid eq',
    '',
  ].join('\n');
  fs.writeFileSync(path.join(dir, 'slapd.conf'), conf);
  const port = await freePort();
  const url = `ldap://127.0.0.1:${port}`;
  const launch = () => startProcess(SLAPD, ['-f', path.join(dir, 'slapd.conf'), '-h', `${url}/`, '-d', '0'],
    { name: 'slapd', waitPort: port, t });
  const auth = ['-x', '-H', url, '-D', ROOTDN, '-w', ROOTPW];
  const h = {
    url, port, dir, proc: await launch(),
  };
  h.ldif = (text) => execFileSync('ldapmodify', ['-a', ...auth], { input: text, stdio: ['pipe', 'pipe', 'pipe'] });
  h.modify = (text) => execFileSync('ldapmodify', auth, { input: text, stdio: ['pipe', 'pipe', 'pipe'] });
  h.del = (dn) => execFileSync('ldapdelete', [...auth, dn], { stdio: ['pipe', 'pipe', 'pipe'] });
  h.search = (base, filter, attrs = []) => execFileSync('ldapsearch',
    ['-LLL', '-o', 'ldif-wrap=no', ...auth, '-b', base, filter, ...attrs], { encoding: 'utf8' });
  h.entry = (uid) => {
    const out = h.search(SUFFIX, `(uid=${uid})`).trim();
    if (!out) return null;
    const e = {};
    for (const line of out.split('\n')) {
      const m = /^([A-Za-z0-9-]+): (.*)$/.exec(line);
      if (m) (e[m[1]] ||= []).push(m[2]);
    }
    return e;
  };
  h.members = (group) => (h.search(GROUPS, `(cn=${group})`, ['member']).match(/^member: .*$/gm) || [])
    .map((l) => l.slice(8));
  h.stop = () => h.proc.stop({ signal: 'SIGTERM' });
  h.bulkAdd = async (file) => {
    await h.stop();
    execFileSync('slapadd', ['-q', '-f', path.join(dir, 'slapd.conf'), '-l', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    h.proc = await launch();
    await ready(() => h.search(SUFFIX, '(ou=people)', ['ou']));
  };
  let seed = `dn: ${SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n`
    + `dn: ${PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n`
    + `dn: ${GROUPS}\nobjectClass: organizationalUnit\nou: groups\n\n`
    + `dn: ${DISABLED}\nobjectClass: organizationalUnit\nou: disabled\n\n`;
  for (const g of groups) {
    seed += `dn: cn=${g},${GROUPS}\nobjectClass: groupOfNames\ncn: ${g}\nmember: cn=placeholder,${SUFFIX}\n\n`;
  }
  await ready(() => h.ldif(seed));
  return h;
}
