// A complete provgate test environment on 127.0.0.1: redis-server (AOF on),
// the real OpenID provider, the fault-injection OP, the real SCIM server,
// the echo upstream and Debian's nginx loading ngx_http_provgate_module.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import {
  tempDir, freePort, startRedis, startOidcOp, startRogueOp, startScim, startEcho,
  startNginx, nginxConf, nginxTest, Browser, oidcLogin, redisCommand,
} from '../lib/harness.mjs';
import { USERS, oidcClient, ALL_SCOPES } from '../lib/fixtures.mjs';

export const MODULE = process.env.PROVGATE_MODULE
  || path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../../build/ngx_http_provgate_module.so');

/** Environment for nginx: LD_PRELOAD of libasan when the module is an ASan build. */
export function nginxEnv(prefix) {
  const env = {};
  if (process.env.PROVGATE_NGINX_PRELOAD) {
    env.LD_PRELOAD = process.env.PROVGATE_NGINX_PRELOAD;
    env.ASAN_OPTIONS = `detect_leaks=0:abort_on_error=0:log_path=${path.join(prefix, 'logs', 'asan')}`;
    env.UBSAN_OPTIONS = `print_stacktrace=1:log_path=${path.join(prefix, 'logs', 'ubsan')}`;
  }
  return env;
}

/** Sanitizer reports written by nginx processes under prefix (none expected). */
export function sanitizerReports(prefix) {
  const dir = path.join(prefix, 'logs');
  if (!fs.existsSync(dir)) return [];
  const reports = fs.readdirSync(dir).filter((f) => /^(asan|ubsan)\./.test(f))
    .map((f) => fs.readFileSync(path.join(dir, f), 'utf8'));
  const stderr = path.join(dir, 'stderr.log');
  if (fs.existsSync(stderr)) {
    const text = fs.readFileSync(stderr, 'utf8');
    if (/runtime error:|AddressSanitizer|LeakSanitizer/.test(text)) reports.push(text.slice(0, 8000));
  }
  const errlog = path.join(dir, 'error.log');
  if (fs.existsSync(errlog)) {
    const crashes = fs.readFileSync(errlog, 'utf8').split('\n').filter((l) => /exited on signal|\[alert\]/.test(l));
    if (crashes.length) reports.push(crashes.join('\n'));
  }
  return reports;
}

export const DEFAULT_POLICIES = {
  policies: [
    {
      id: 'employees-demoapp',
      kind: 'birthright',
      description: 'Every employee gets a demoapp account in group staff',
      who: { attr: 'employee_type', eq: 'employee' },
      grants: [{ target: 'demoapp', entitlements: [{ type: 'group', value: 'staff' }] }],
    },
    {
      id: 'engineering-demoapp',
      kind: 'birthright',
      description: 'Engineering also gets group engineering',
      who: { all: [{ attr: 'employee_type', eq: 'employee' }, { attr: 'department', in: ['eng'] }] },
      grants: [{ target: 'demoapp', entitlements: [{ type: 'group', value: 'engineering' }] }],
    },
  ],
};

export const EXTRA_USERS = {
  dave: {
    password: 'dave-pw',
    claims: {
      sub: 'sub-dave-0004', email: 'dave@example.com', email_verified: true,
      preferred_username: 'dave', name: 'Dave Doe', given_name: 'Dave', family_name: 'Doe',
      groups: ['staff'], employee_type: 'employee', department: 'eng', employee_number: '4004',
    },
  },
  eve: {
    password: 'eve-pw',
    claims: {
      sub: 'sub-eve-0005', email: 'eve@example.com', email_verified: true,
      preferred_username: 'eve', name: 'Eve Evil', given_name: 'Eve', family_name: 'Evil',
      groups: ['staff\r\nX-Injected: yes'], employee_type: 'employee', department: 'ops',
      employee_number: '5005',
    },
  },
  // another subject with alice's verified email: correlated to alice
  alice2: {
    password: 'alice2-pw',
    claims: {
      sub: 'sub-alice-second', email: 'Alice@Example.com', email_verified: true,
      preferred_username: 'alice', name: 'Alice Anders', given_name: 'Alice', family_name: 'Anders',
      groups: ['staff'], employee_type: 'employee', department: 'eng', employee_number: '1001',
    },
  },
  // another subject with carol's email, which is not verified: never linked
  carol2: {
    password: 'carol2-pw',
    claims: {
      sub: 'sub-carol-second', email: 'carol@example.com', email_verified: false,
      preferred_username: 'carol2', name: 'Carol Two', given_name: 'Carol', family_name: 'Two',
      groups: ['staff'], employee_type: 'employee', department: 'ops', employee_number: '3004',
    },
  },
  nul: {
    password: 'nul-pw',
    claims: {
      sub: 'sub-nul-0006', email: 'nul@example.com', email_verified: true,
      preferred_username: 'nul\u0000admin', name: 'Nul', employee_type: 'employee', department: 'ops',
    },
  },
};

/** The provgate JSON config for this environment. */
export function provgateConfig(e, over = {}) {
  const cfg = {
    instance: 'it',
    redis: {
      host: '127.0.0.1', port: e.redisPort, key_prefix: 'pg:', connect_timeout_ms: 500, command_timeout_ms: 1000,
    },
    session: { cookie_secure: false, ttl_s: 3600, key_file: 'session.key' },
    audit: { file: 'audit.jsonl', stream: 'audit' },
    idps: {
      main: {
        type: 'oidc',
        issuer: e.op.issuer,
        client_id: 'provgate-test',
        client_secret_file: 'client.secret',
        token_auth: 'client_secret_basic',
        redirect_uri: `${e.base}/provgate/callback`,
        post_logout_redirect_uri: `${e.base}/signed-out`,
        scopes: ALL_SCOPES.split(' '),
        allowed_algs: ['RS256', 'ES256'],
        http_timeout_ms: 3000,
        jwks_refresh_min_s: 2,
      },
      post: {
        type: 'oidc',
        issuer: e.op.issuer,
        client_id: 'provgate-post',
        client_secret: 'provgate-post-secret-0123456789abcdef',
        token_auth: 'client_secret_post',
        redirect_uri: `${e.base}/provgate/callback`,
        scopes: ALL_SCOPES.split(' '),
      },
      rogue: {
        type: 'oidc',
        issuer: e.rogue.issuer,
        client_id: e.rogue.clientId,
        client_secret: e.rogue.clientSecret,
        redirect_uri: `${e.base}/provgate/callback`,
        scopes: ['openid', 'email', 'profile'],
        allowed_algs: ['RS256'],
        jwks_refresh_min_s: 1,
        http_timeout_ms: 1000,
      },
    },
    targets: {
      demoapp: {
        type: 'scim',
        base_url: e.scim.baseUrl,
        auth: { type: 'bearer', token_file: 'scim.token' },
        timeout_ms: 3000,
        connect_timeout_ms: 1000,
        wait_ms: 2500,
        attributes: {
          userName: '${username}',
          'name.givenName': '${given_name}',
          'name.familyName': '${family_name}',
          displayName: '${name}',
          emails: '${email}',
          externalId: '${identity_id}',
          active: true,
        },
      },
    },
    outbox: {
      claim_idle_ms: 2000, backoff_base_ms: 300, backoff_max_ms: 2000, max_attempts: 6,
    },
    identity: {
      claims: {
        username: 'preferred_username', email: 'email', given_name: 'given_name', family_name: 'family_name',
        name: 'name', employee_type: 'employee_type', department: 'department', employee_number: 'employee_number',
      },
      groups_claim: 'groups',
      correlation: [{ claim: 'email', verified_claim: 'email_verified', index: 'email' }],
    },
    policy_files: ['policies.json'],
  };
  return { ...cfg, ...over };
}

/** nginx http{} block for this environment. */
export function httpBlock(e, extra = '', extraHttp = '') {
  return `
    provgate_config ${e.cfgFile};
    ${extraHttp}
    upstream echo { server 127.0.0.1:${e.echo.port}; keepalive 16; }
    server {
        listen 127.0.0.1:${e.port};
        underscores_in_headers on;
        location = /provgate/callback { provgate_callback; }
        location = /provgate/logout { provgate_logout; }
        location = /signed-out { return 200 "signed out\\n"; }
        location /public/ { proxy_pass http://echo; }
        location /app/ {
            provgate oidc:main; provgate_app demoapp;
            proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection "";
        }
        location /post/ { provgate oidc:post; provgate_app demoapp; proxy_pass http://echo; }
        location /rogue/ { provgate oidc:rogue; provgate_app demoapp; proxy_pass http://echo; }
        location / { provgate oidc:main; provgate_app demoapp; proxy_pass http://echo; }
        location /authcheck/ { auth_request /app/check; proxy_pass http://echo; }
        location /authcheck-main/ {
            provgate oidc:main; provgate_app demoapp;
            auth_request /app/check; proxy_pass http://echo;
        }
        ${extra}
    }`;
}

/**
 * Start everything. opts: {workers, users, policies, cfgOver(e) -> object,
 * scimDialect ("standard" | "legacy", see tests/peers/scim-server.mjs)}.
 * Returns an env object with helpers; stop() tears it all down.
 */
export async function startEnv(t, opts = {}) {
  const e = { dir: tempDir('pg-gw-', t) };
  e.port = await freePort();
  e.port2 = await freePort();
  e.base = `http://127.0.0.1:${e.port}`;
  e.redisPort = await freePort();
  e.redis = await startRedis({ dir: path.join(e.dir, 'redis'), port: e.redisPort, aof: true, t });
  e.users = { ...USERS, ...EXTRA_USERS, ...(opts.users || {}) };
  e.opPort = await freePort();
  e.opKeys = path.join(e.dir, 'op-jwks.json');
  e.clients = [
    oidcClient({ redirectUris: [`${e.base}/provgate/callback`], postLogoutUris: [`${e.base}/signed-out`] }),
    oidcClient({
      clientId: 'provgate-post', clientSecret: 'provgate-post-secret-0123456789abcdef',
      redirectUris: [`${e.base}/provgate/callback`], authMethod: 'client_secret_post',
    }),
  ];
  e.startOp = async (users) => {
    e.op = await startOidcOp({
      clients: e.clients, users: users || e.users, port: e.opPort, keysFile: e.opKeys, dir: path.join(e.dir, 'op'), t,
    });
    return e.op;
  };
  fs.mkdirSync(path.join(e.dir, 'op'), { recursive: true });
  await e.startOp();
  e.rogue = await startRogueOp({ clientId: 'rogue-client', clientSecret: 'rogue-secret-0123456789abcdef', t });
  e.scim = await startScim({ t, dataFile: path.join(e.dir, 'scim.json'), dialect: opts.scimDialect || 'standard' });
  e.echo = await startEcho({ t });

  e.cfgDir = path.join(e.dir, 'provgate');
  fs.mkdirSync(e.cfgDir, { recursive: true });
  fs.writeFileSync(path.join(e.cfgDir, 'session.key'), crypto.randomBytes(48).toString('base64'));
  fs.writeFileSync(path.join(e.cfgDir, 'client.secret'), `${e.clients[0].client_secret}\n`);
  fs.writeFileSync(path.join(e.cfgDir, 'scim.token'), `${e.scim.token}\n`);
  fs.writeFileSync(path.join(e.cfgDir, 'policies.json'), JSON.stringify(opts.policies || DEFAULT_POLICIES, null, 2));
  e.cfgFile = path.join(e.cfgDir, 'provgate.json');
  e.auditFile = path.join(e.cfgDir, 'audit.jsonl');
  e.baseConfig = () => provgateConfig(e);
  const cfg = provgateConfig(e, opts.cfgOver ? opts.cfgOver(e) : {});
  fs.writeFileSync(e.cfgFile, JSON.stringify(cfg, null, 2));

  e.prefix = path.join(e.dir, 'nginx');
  e.conf = nginxConf({ prefix: e.prefix, modules: [MODULE], http: httpBlock(e, opts.extraServer || '', opts.extraHttp ? opts.extraHttp(e) : '') });
  e.nginx = await startNginx({
    conf: e.conf, prefix: e.prefix, workers: opts.workers || 1, waitPort: e.port, t, env: nginxEnv(e.prefix),
  });

  // Accept */* : a browser-like client that the echo upstream answers in JSON
  e.browser = () => new Browser({ headers: { accept: '*/*' } });
  e.login = async (user, startPath = '/app/hello', b = e.browser()) => {
    const res = await oidcLogin(b, `${e.base}${startPath}`, user, e.users[user].password);
    return { b, res };
  };
  e.audit = () => {
    if (!fs.existsSync(e.auditFile)) return [];
    return fs.readFileSync(e.auditFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  };
  e.redisCmd = (...args) => redisCommand(e.redisPort, ...args);
  e.scimUsers = async (userName) => (await e.scim.state()).users.filter((u) => !userName || u.userName === userName);
  e.nginxTest = (conf) => nginxTest(conf, { prefix: path.join(e.dir, 'nginx-t'), env: nginxEnv(path.join(e.dir, 'nginx-t')) });
  e.sanitizerReports = () => sanitizerReports(e.prefix);
  return e;
}
