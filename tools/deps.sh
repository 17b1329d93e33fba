#!/usr/bin/env bash
# Install everything provgate needs to build, test and demo, idempotently:
# Debian packages (only the missing ones; apt-get update once when needed)
# and the npm packages of the test peers (tests/peers).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

pkgs=(build-essential pkg-config ca-certificates curl
      nginx nginx-dev redis-server
      liblasso3-dev liboauth2-dev libcjose-dev libhiredis-dev libjansson-dev
      libcurl4-openssl-dev libssl-dev libcmocka-dev zlib1g-dev libevent-dev
      clang-14 libfuzzer-14-dev libclang-rt-14-dev
      wrk libxml2-utils xmlsec1 opensaml-schemas xmltooling-schemas chromium
      libldap-dev slapd ldap-utils libpq-dev postgresql)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs npm)

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged services; provgate runs its own instances.
    for svc in nginx redis-server slapd postgresql; do
        $sudo service "$svc" stop >/dev/null 2>&1 || true
    done
fi

for d in tests/peers tests/browser; do
    stamp="$top/$d/node_modules/.provgate-stamp"
    if [ ! -f "$stamp" ] || [ "$top/$d/package.json" -nt "$stamp" ]; then
        echo "deps: npm install in $d"
        (cd "$top/$d" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
        touch "$stamp"
    fi
done
echo "deps: ok"
