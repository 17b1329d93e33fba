// HR exports dropped in a folder (hr_source.drop_dir): the sidecar imports
// each file once, in name order, and moves it to processed/ (applied) or
// failed/ (refused, with <name>.error.json); nothing of a refused file is
// applied. Real sidecar, real SCIM peer through the outbox.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  cleanupAll, freePort, startProcess, waitForPort, REPO_ROOT, jsonRequest, until,
} from './lib/harness.mjs';
import { startEnv, sanitizerReports } from './gw/env.mjs';

const BIN = process.env.PG_PROVGATED_BIN
  || path.join(REPO_ROOT, process.env.PROVGATE_ASAN ? 'build/asan-bin/provgated' : 'build/provgated');
const ADMIN_TOKEN = 'drop-admin-token-0123456789abcdef';
const HEADER = 'emp_id,login,email,name,given,family,dept,type,end_date';
const row = (id, login, dept) => `${id},${login},${login}@example.com,${login} Person,${login},Person,${dept},employee,`;

describe('HR exports dropped in a folder (hr_source.drop_dir)', () => {
  let e;
  let sc;
  let scPort;
  let dropDir;
  let scCfgFile;

  // written under a dot name, then renamed: the sidecar never sees half a file
  const drop = (name, rows) => {
    const tmp = path.join(dropDir, `.${name}.tmp`);
    fs.writeFileSync(tmp, `${[HEADER, ...rows].join('\n')}\n`);
    fs.renameSync(tmp, path.join(dropDir, name));
  };
  const active = async (login) => {
    const u = (await e.scimUsers(login))[0];
    return u ? u.active : null;
  };
  const dropEvents = () => e.audit().filter((x) => x.type === 'jml.drop');

  before(async () => {
    e = await startEnv(undefined, {
      workers: 1,
      cfgOver: (env) => {
        dropDir = path.join(env.dir, 'hr-drop');
        fs.mkdirSync(dropDir);
        return {
          hr_source: {
            drop_dir: dropDir,
            poll_s: 1,
            lease_s: 5,
            feed: {
              key_column: 'emp_id',
              attributes: {
                login: 'username', email: 'email', name: 'name', given: 'given_name', family: 'family_name',
                dept: 'department', type: 'employee_type',
              },
              max_leave_pct: 100,
              max_malformed_pct: 20,
            },
          },
        };
      },
    });
    scCfgFile = e.cfgFile;
    fs.writeFileSync(path.join(e.dir, 'admin.token'), ADMIN_TOKEN);
    scPort = await freePort();
    sc = await startProcess(BIN, ['--config', scCfgFile, '--listen', `127.0.0.1:${scPort}`, '--log-level', 'info',
      '--admin-token-file', path.join(e.dir, 'admin.token')], { name: 'provgated-drop' });
    await waitForPort(scPort);
  });
  after(async () => {
    if (sc) {
      const { code, signal } = await sc.stop();
      assert.equal(signal, null);
      assert.equal(code, 0, sc.output.slice(-2000));
      assert.doesNotMatch(sc.output, /Sanitizer|runtime error/);
    }
    if (e) {
      await e.nginx.stop();
      assert.deepEqual(sanitizerReports(e.prefix), []);
    }
    await cleanupAll();
  });

  test('a dropped export is imported once and moved to processed/', async () => {
    drop('2026-11-01.csv', [row('7001', 'dana', 'eng'), row('7002', 'emil', 'sales')]);
    await until('dana and emil provisioned', async () => (await active('dana')) === true && (await active('emil')) === true);
    await until('moved to processed/', () => fs.existsSync(path.join(dropDir, 'processed', '2026-11-01.csv')));
    assert.ok(!fs.existsSync(path.join(dropDir, '2026-11-01.csv')));
    const ev = dropEvents();
    assert.equal(ev.length, 1);
    assert.equal(ev[0].outcome, 'success');
    assert.equal(ev[0].reason, 'processed');
    assert.equal(ev[0].file, '2026-11-01.csv');
  });

  test('several files are applied in name order; a refused one goes to failed/ with its report, nothing of it applied', async () => {
    // dropped together: 03 adds fred, 04 removes him again, 05 is malformed
    // beyond max_malformed_pct (and would have removed emil)
    drop('2026-11-04.csv', [row('7001', 'dana', 'eng'), row('7002', 'emil', 'sales')]);
    drop('2026-11-05.csv', [row('7001', 'dana', 'eng'), '7003,too,few', '7004,also,short']);
    drop('2026-11-03.csv', [row('7001', 'dana', 'eng'), row('7002', 'emil', 'sales'), row('7003', 'fred', 'eng')]);
    drop('.hidden.csv', [row('7009', 'ghost', 'eng')]);
    fs.writeFileSync(path.join(dropDir, 'notes.txt'), 'not an export');
    await until('three more files handled', () => dropEvents().length >= 4, 30000);
    const ev = dropEvents().slice(1);
    assert.deepEqual(ev.map((x) => [x.file, x.reason]),
      [['2026-11-03.csv', 'processed'], ['2026-11-04.csv', 'processed'], ['2026-11-05.csv', 'failed']]);
    // 03 then 04: fred joined, then left (disabled); in the other order he
    // would still be active
    await until('fred disabled', async () => (await active('fred')) === false);
    // 05 was refused as a whole: emil is still active
    assert.equal(await active('emil'), true);
    const report = JSON.parse(fs.readFileSync(path.join(dropDir, 'failed', '2026-11-05.csv.error.json'), 'utf8'));
    assert.equal(report.malformed, 2);
    assert.deepEqual(report.errors.map((x) => x.line), [3, 4]);
    assert.ok(fs.existsSync(path.join(dropDir, 'failed', '2026-11-05.csv')));
    // not exports: left where they are, never imported
    assert.ok(fs.existsSync(path.join(dropDir, '.hidden.csv')));
    assert.ok(fs.existsSync(path.join(dropDir, 'notes.txt')));
    assert.deepEqual(await e.scimUsers('ghost'), []);
  });

  test('POST /import with an empty folder answers 404; a file of the same name again is kept beside the first', async () => {
    const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };
    const r = await jsonRequest('POST', `http://127.0.0.1:${scPort}/import`, {}, auth);
    assert.equal(r.status, 404);
    assert.equal(r.json.error, 'no_export');
    drop('2026-11-01.csv', [row('7001', 'dana', 'eng'), row('7002', 'emil', 'sales')]);
    await until('the second 2026-11-01.csv handled', () => dropEvents().length >= 5, 15000);
    const names = fs.readdirSync(path.join(dropDir, 'processed')).filter((n) => n.startsWith('2026-11-01.csv'));
    assert.equal(names.length, 2, names.join(' '));
  });

  test('"file" and "drop_dir" together, or a drop_dir that is not a folder, stop provgated at start', () => {
    const cfg = JSON.parse(fs.readFileSync(scCfgFile, 'utf8'));
    const bad = path.join(path.dirname(scCfgFile), 'bad-drop.json'); // relative paths resolve as for the real one
    for (const [hr, why] of [
      [{ ...cfg.hr_source, file: path.join(e.dir, 'hr.csv') }, /\$\.hr_source: set exactly one of /],
      [{ ...cfg.hr_source, drop_dir: path.join(e.dir, 'nope') }, /\$\.hr_source\.drop_dir: not a directory/],
    ]) {
      fs.writeFileSync(bad, JSON.stringify({ ...cfg, hr_source: hr }));
      const r = spawnSync(BIN, ['--config', bad, '--listen', '127.0.0.1:1'], { encoding: 'utf8', timeout: 10000 });
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, why);
    }
  });
});
