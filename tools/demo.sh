#!/usr/bin/env bash
# provgate demo: everything on 127.0.0.1, state under run/demo/.
#   tools/demo.sh start    start Redis, the OIDC provider, the SCIM app, the
#                          echo upstream and nginx with the module
#   tools/demo.sh status   what got provisioned (SCIM accounts, identities)
#   tools/demo.sh stop     stop exactly what start started (pid files)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
run="$top/run/demo"
NGINX_PORT=${PROVGATE_DEMO_PORT:-8080}
OP_PORT=${PROVGATE_DEMO_OP_PORT:-9400}
SCIM_PORT=${PROVGATE_DEMO_SCIM_PORT:-9500}
ECHO_PORT=${PROVGATE_DEMO_ECHO_PORT:-9600}
REDIS_PORT=${PROVGATE_DEMO_REDIS_PORT:-6390}
SCIM_TOKEN=demo-scim-token-please-change
BASE="http://127.0.0.1:$NGINX_PORT"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    local port=$1 name=$2 i
    for i in $(seq 1 100); do
        port_busy "$port" && return 0
        sleep 0.1
    done
    echo "demo: $name did not start on port $port; see $run/logs/" >&2
    exit 1
}

# Start a background process with its own pid file and log.
spawn() {
    local name=$1; shift
    nohup "$@" >"$run/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$run/pids/$name.pid"
}

stop() {
    local f pid
    [ -d "$run/pids" ] || { echo "demo: nothing running"; return 0; }
    if [ -f "$run/nginx/logs/nginx.pid" ]; then
        /usr/sbin/nginx -p "$run/nginx/" -c conf/nginx.conf -s stop 2>/dev/null || true
    fi
    for f in "$run"/pids/*.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        rm -f "$f"
    done
    echo "demo: stopped"
}

status() {
    echo "SCIM accounts in the demo app (GET /scim/v2/Users):"
    curl -s -H "Authorization: Bearer $SCIM_TOKEN" "http://127.0.0.1:$SCIM_PORT/scim/v2/Users" \
        | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);
            if(!r.Resources||!r.Resources.length){console.log("  (none yet: sign in first)");return;}
            for(const u of r.Resources){console.log(`  ${u.userName}  id=${u.id}  name="${u.displayName||""}"  active=${u.active}`);}})'
    echo "SCIM groups:"
    curl -s -H "Authorization: Bearer $SCIM_TOKEN" "http://127.0.0.1:$SCIM_PORT/scim/v2/Groups" \
        | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);
            for(const g of r.Resources||[]){console.log(`  ${g.displayName}: ${(g.members||[]).map(m=>m.display||m.value).join(", ")||"-"}`);}})'
    echo "Last audit events ($run/provgate/audit.jsonl):"
    tail -n 8 "$run/provgate/audit.jsonl" 2>/dev/null \
        | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const l of s.split("\n").filter(Boolean)){const e=JSON.parse(l);
            console.log(`  ${e.ts} ${e.type} ${e.outcome} ${e.reason||""}`);}})' || true
}

start() {
    [ -f "$top/build/ngx_http_provgate_module.so" ] || { echo "demo: run 'make' first" >&2; exit 1; }
    if [ -d "$run/pids" ] && ls "$run"/pids/*.pid >/dev/null 2>&1; then
        echo "demo: already running (tools/demo.sh stop first)"; exit 1
    fi
    for p in $NGINX_PORT $OP_PORT $SCIM_PORT $ECHO_PORT $REDIS_PORT; do
        if port_busy "$p"; then
            echo "demo: port $p on 127.0.0.1 is in use (set PROVGATE_DEMO_*PORT)" >&2; exit 1
        fi
    done
    mkdir -p "$run"/{logs,pids,redis,op,provgate,nginx/conf,nginx/logs,nginx/tmp}

    spawn redis /usr/bin/redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$run/redis" \
        --appendonly yes --save "" --daemonize no
    wait_port "$REDIS_PORT" redis

    cat >"$run/op/clients.json" <<EOF
[{"client_id": "provgate-demo", "client_secret": "provgate-demo-secret-0123456789abcdef",
  "redirect_uris": ["$BASE/provgate/callback"],
  "post_logout_redirect_uris": ["$BASE/"],
  "token_endpoint_auth_method": "client_secret_basic"}]
EOF
    cat >"$run/op/users.json" <<'EOF'
{
  "alice": {"password": "alice-pw", "claims": {"sub": "sub-alice-0001", "email": "alice@example.com",
    "email_verified": true, "preferred_username": "alice", "name": "Alice Anders", "given_name": "Alice",
    "family_name": "Anders", "groups": ["staff", "engineering"], "employee_type": "employee",
    "department": "engineering", "employee_number": "1001"}},
  "bob": {"password": "bob-pw", "claims": {"sub": "sub-bob-0002", "email": "bob@example.com",
    "email_verified": true, "preferred_username": "bob", "name": "Bob Brown", "given_name": "Bob",
    "family_name": "Brown", "groups": ["staff"], "employee_type": "contractor",
    "department": "sales", "employee_number": "2002"}}
}
EOF
    spawn oidc-op node "$top/tests/peers/oidc-op.mjs" --port "$OP_PORT" --issuer "http://127.0.0.1:$OP_PORT" \
        --clients "$run/op/clients.json" --users "$run/op/users.json" --keys "$run/op/jwks.json"
    spawn scim-app node "$top/tests/peers/scim-server.mjs" --port "$SCIM_PORT" --token "$SCIM_TOKEN" \
        --data "$run/scim.json" --groups staff,engineering,admins
    spawn echo-app node "$top/tests/peers/echo-upstream.mjs" --port "$ECHO_PORT" --name "Demo app (echo of what provgate sends)"
    wait_port "$OP_PORT" "OIDC provider"
    wait_port "$SCIM_PORT" "SCIM app"
    wait_port "$ECHO_PORT" "echo app"

    head -c 48 /dev/urandom | base64 >"$run/provgate/session.key"
    chmod 600 "$run/provgate/session.key"
    echo "provgate-demo-secret-0123456789abcdef" >"$run/provgate/client.secret"
    echo "$SCIM_TOKEN" >"$run/provgate/scim.token"
    cp "$top/policies/birthright.json" "$run/provgate/policies.json"
    cat >"$run/provgate/provgate.json" <<EOF
{
  "instance": "demo",
  "redis": {"host": "127.0.0.1", "port": $REDIS_PORT, "key_prefix": "pg:"},
  "session": {"cookie_secure": false, "ttl_s": 28800, "key_file": "session.key"},
  "audit": {"file": "audit.jsonl", "stream": "audit"},
  "idps": {
    "demo": {
      "type": "oidc",
      "issuer": "http://127.0.0.1:$OP_PORT",
      "client_id": "provgate-demo",
      "client_secret_file": "client.secret",
      "redirect_uri": "$BASE/provgate/callback",
      "post_logout_redirect_uri": "$BASE/",
      "scopes": ["openid", "email", "profile", "groups", "employee"]
    }
  },
  "targets": {
    "demoapp": {
      "type": "scim",
      "base_url": "http://127.0.0.1:$SCIM_PORT/scim/v2",
      "auth": {"type": "bearer", "token_file": "scim.token"},
      "attributes": {
        "userName": "\${username}",
        "name.givenName": "\${given_name}",
        "name.familyName": "\${family_name}",
        "displayName": "\${name}",
        "emails": "\${email}",
        "externalId": "\${identity_id}",
        "active": true
      }
    }
  },
  "identity": {
    "claims": {"username": "preferred_username", "email": "email", "given_name": "given_name",
               "family_name": "family_name", "name": "name", "employee_type": "employee_type",
               "department": "department", "employee_number": "employee_number"},
    "groups_claim": "groups",
    "correlation": [{"claim": "email", "verified_claim": "email_verified", "index": "email"}]
  },
  "policy_files": ["policies.json"]
}
EOF
    user=""
    [ "$(id -u)" -eq 0 ] && user="user root;"
    cat >"$run/nginx/conf/nginx.conf" <<EOF
load_module $top/build/ngx_http_provgate_module.so;
$user
worker_processes 2;
pid $run/nginx/logs/nginx.pid;
error_log $run/nginx/logs/error.log info;
events { worker_connections 1024; }
http {
    access_log $run/nginx/logs/access.log;
    client_body_temp_path $run/nginx/tmp/body;
    proxy_temp_path $run/nginx/tmp/proxy;
    fastcgi_temp_path $run/nginx/tmp/fastcgi;
    uwsgi_temp_path $run/nginx/tmp/uwsgi;
    scgi_temp_path $run/nginx/tmp/scgi;

    provgate_config $run/provgate/provgate.json;

    upstream demoapp { server 127.0.0.1:$ECHO_PORT; keepalive 16; }

    server {
        listen 127.0.0.1:$NGINX_PORT;
        location = /provgate/callback { provgate_callback; }
        location = /provgate/logout   { provgate_logout; }
        location / {
            provgate oidc:demo;
            provgate_app demoapp;
            proxy_pass http://demoapp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    /usr/sbin/nginx -t -p "$run/nginx/" -c conf/nginx.conf -e "$run/nginx/logs/error.log" 2>&1 | sed 's/^/  /'
    /usr/sbin/nginx -p "$run/nginx/" -c conf/nginx.conf -e "$run/nginx/logs/error.log"
    wait_port "$NGINX_PORT" nginx

    cat <<EOF

provgate demo is running.

  Sign in at:   $BASE/
  Demo user:    alice / alice-pw   (employee in engineering: gets an account
                                    in the demo SCIM app, groups staff + engineering)
  Second user:  bob / bob-pw       (contractor: no policy grants access -> 403)
  Sign out:     $BASE/provgate/logout

After signing in, the page shows the identity headers the app received, and
'make demo-status' (tools/demo.sh status) shows what got provisioned.
Logs and state: $run   Stop: make demo-stop

EOF
    status
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
