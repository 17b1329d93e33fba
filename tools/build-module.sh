#!/usr/bin/env bash
# Build ngx_http_provgate_module.so against Debian's nginx sources.
#   tools/build-module.sh BUILD_DIR OUT_SO "EXTRA_CFLAGS"
# Copies /usr/share/nginx/src (package nginx-dev) to BUILD_DIR/src, configures
# it once with Debian's --with-compat --with-threads and this tree as a dynamic
# addon, then runs `make -f objs/Makefile modules`. PROVGATE_LIB names the
# core static library the module links (set by the Makefile).
set -euo pipefail
build=$1 out=$2 extra=${3:-}
top=$(cd "$(dirname "$0")/.." && pwd)
src=${NGINX_SRC:-/usr/share/nginx/src}
[ -d "$src" ] || { echo "build-module: $src missing (apt-get install nginx-dev)" >&2; exit 1; }
stamp="$build/.configured"
want="$top|$extra|${PROVGATE_LIB:-}|$(md5sum <"$top/config")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -rf "$build"
    mkdir -p "$build"
    cp -a "$src" "$build/src"
    (cd "$build/src" && ./configure --with-compat --with-threads \
        --with-cc-opt="-g -O2 $extra" --with-ld-opt="$extra" \
        --add-dynamic-module="$top" >"$build/configure.log" 2>&1) \
        || { tail -30 "$build/configure.log" >&2; exit 1; }
    echo "$want" >"$stamp"
fi
# the addon Makefile does not know the core library: always relink
rm -f "$build/src/objs/ngx_http_provgate_module.so"
make -s -C "$build/src" -f objs/Makefile modules >"$build/make.log" 2>&1 \
    || { grep -E 'error|warning' -A3 "$build/make.log" | head -60 >&2; exit 1; }
mkdir -p "$(dirname "$out")"
cp "$build/src/objs/ngx_http_provgate_module.so" "$out"
echo "built $out"
