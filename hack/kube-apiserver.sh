#!/usr/bin/env bash
# Build (once) and print the path of a real kube-apiserver binary for tests.
#
# No package registry ships a kube-apiserver binary, so it is built from Debian bookworm's
# `kubernetes` source package (upstream v1.20.2 with its full vendor/ tree) using Debian's Go:
#
#   1. install golang-go, rsync, etcd-server, openssl and Debian's reflect2/json-iterator
#   2. fetch the source package with a private apt sources list (/etc/apt is left untouched)
#   3. replace the vendored modern-go/reflect2 and json-iterator/go with Debian's copies
#      (the vendored ones crash kube-apiserver built with Go >= 1.18 on the first
#      custom-resource write: "fatal error: fault" in mapiterinit)
#   4. CGO_ENABLED=0 KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean make WHAT=cmd/kube-apiserver
#
# The binary is cached under ${SCOREOPS_CACHE:-~/.cache/scoreops}/kube-apiserver/<version>/.
# A cold build takes several minutes and ~1.3 GB of RAM; later runs print the cached path.
#
# Usage: hack/kube-apiserver.sh            print the binary's path (building it if needed)
#        hack/kube-apiserver.sh --rebuild  drop the cached binary and build again
#
# Environment: SCOREOPS_CACHE, SCOREOPS_DEBIAN_MIRROR (override the detected Debian mirror),
#              SCOREOPS_KEEP_BUILD=1 (keep the build tree after a successful build).
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.20.2}"
_cache="${SCOREOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scoreops}"
BIN="$_cache/kube-apiserver/$KUBE_VERSION/kube-apiserver"

# Fast path: nothing to source, nothing to check beyond the file itself.
if [ $# -eq 0 ] && [ -x "$BIN" ]; then
  printf '%s\n' "$BIN"
  exit 0
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
. "$HERE/lib.sh"

case "${1:-}" in
  ""|--rebuild) ;;
  -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

DEB_SUITE="bookworm"
DEB_PACKAGES=(golang-go rsync golang-github-modern-go-reflect2-dev
              golang-github-json-iterator-go-dev etcd-server openssl)
CACHE_DIR="$(dirname "$BIN")"
WORK="$CACHE_DIR/build"

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
  log "another build of kube-apiserver $KUBE_VERSION is running; waiting for it"
  flock 9
fi
if [ "${1:-}" = "--rebuild" ]; then
  rm -f "$BIN"
elif [ -x "$BIN" ]; then       # built by whoever held the lock before us
  printf '%s\n' "$BIN"
  exit 0
fi

# debian_mirror: the Debian archive URI this machine already uses (not the security one).
debian_mirror() {
  if [ -n "${SCOREOPS_DEBIAN_MIRROR:-}" ]; then
    printf '%s\n' "${SCOREOPS_DEBIAN_MIRROR%/}"
    return
  fi
  local f uri=""
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # one-line format: deb [opts] URI SUITE COMPONENTS...
    uri="$(sed -E 's/\[[^]]*\]//' "$f" | awk '
      $1 == "deb" || $1 == "deb-src" {
        if ($3 !~ /-security$/ && $2 ~ /debian/) { print $2; exit }
      }')"
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ]; then
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      # deb822 format: stanzas of "Key: value" lines separated by blank lines
      uri="$(awk '
        function flush() {
          if (uris != "" && suites !~ /-security/ && uris ~ /debian/) { split(uris, u, " "); print u[1]; found = 1 }
          uris = ""; suites = ""
        }
        /^[[:space:]]*$/ { flush(); if (found) exit; next }
        tolower($1) == "uris:"   { $1 = ""; uris = $0 }
        tolower($1) == "suites:" { $1 = ""; suites = $0 }
        END { if (!found) flush() }' "$f" | head -n1 | tr -d ' ')"
      [ -n "$uri" ] && break
    done
  fi
  printf '%s\n' "${uri:-http://deb.debian.org/debian}" | sed 's:/*$::'
}

fetch_source() {
  local mirror src_dir apt_dir keyring opts list
  mirror="$(debian_mirror)"
  src_dir="$WORK/src"
  apt_dir="$WORK/apt"
  if compgen -G "$src_dir/kubernetes_*.orig.tar.*" >/dev/null; then
    log "source package already downloaded in $src_dir"
    return
  fi
  mkdir -p "$src_dir" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  list="$apt_dir/sources.list"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  opts=""
  [ -f "$keyring" ] && opts="[signed-by=$keyring] "
  printf 'deb-src %s%s %s main\n' "$opts" "$mirror" "$DEB_SUITE" >"$list"
  local apt_opts=(-o "Dir::Etc::SourceList=$list" -o Dir::Etc::SourceParts=/dev/null
                  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
                  -o APT::Sandbox::User=root)
  [ "$(id -u)" -eq 0 ] || apt_opts=("${apt_opts[@]:0:${#apt_opts[@]}-2}")
  log "fetching the Debian $DEB_SUITE 'kubernetes' source package from $mirror"
  apt-get "${apt_opts[@]}" -qq update \
    || die "apt-get update with the private sources list $list failed (mirror $mirror; set SCOREOPS_DEBIAN_MIRROR to override)"
  (cd "$src_dir" && apt-get "${apt_opts[@]}" -q source --download-only kubernetes) \
    || die "apt-get source --download-only kubernetes failed (mirror $mirror)"
  compgen -G "$src_dir/kubernetes_*.orig.tar.*" >/dev/null \
    || die "no kubernetes orig tarball in $src_dir after download"
}

unpack_source() {
  local tree="$WORK/tree" tarball
  if [ -f "$tree/Makefile" ] && [ -d "$tree/vendor" ]; then
    log "using unpacked tree $tree"
    return
  fi
  tarball="$(ls "$WORK"/src/kubernetes_*.orig.tar.* | head -n1)"
  log "unpacking $(basename "$tarball")"
  rm -rf "$tree" && mkdir -p "$tree"
  tar -xf "$tarball" -C "$tree" --strip-components=1
  [ -f "$tree/Makefile" ] && [ -d "$tree/vendor" ] \
    || die "unexpected layout of $tarball (no Makefile or vendor/ at the top)"
}

swap_vendored_libs() {
  local tree="$WORK/tree" gocode=/usr/share/gocode/src/github.com
  local pair src dst
  for pair in "modern-go/reflect2" "json-iterator/go"; do
    src="$gocode/$pair"
    dst="$tree/vendor/github.com/$pair"
    [ -d "$src" ] || die "Debian's copy of $pair is missing at $src"
    log "replacing vendor/github.com/$pair with Debian's copy"
    rm -rf "$dst"
    mkdir -p "$(dirname "$dst")"
    cp -rL "$src" "$dst"
    find "$dst" -name '*_test.go' -delete
  done
  rm -rf "$tree/vendor/github.com/json-iterator/go/extra"
}

build() {
  local tree="$WORK/tree" start end out
  command -v go >/dev/null 2>&1 || die "go not found after installing golang-go"
  log "building kube-apiserver $KUBE_VERSION with $(go version | awk '{print $3}') (several minutes, ~1.3 GB RAM)"
  log "build log: $WORK/build.log"
  start=$(date +%s)
  if ! (cd "$tree" && env CGO_ENABLED=0 KUBE_GIT_VERSION="$KUBE_VERSION" \
        KUBE_GIT_TREE_STATE=clean GOPROXY=off GOCACHE="$WORK/gocache" \
        make WHAT=cmd/kube-apiserver) >"$WORK/build.log" 2>&1; then
    log_tail "$WORK/build.log" 60
    die "make WHAT=cmd/kube-apiserver failed (full log: $WORK/build.log)"
  fi
  end=$(date +%s)
  out="$tree/_output/bin/kube-apiserver"
  [ -x "$out" ] || out="$(find "$tree/_output" -type f -name kube-apiserver -perm -u+x | head -n1)"
  [ -n "$out" ] && [ -x "$out" ] || die "build finished but no kube-apiserver under $tree/_output"
  log "built in $((end - start)) s"
  "$out" --version | grep -q "$KUBE_VERSION" \
    || die "built binary reports '$("$out" --version)', expected $KUBE_VERSION"
  cp "$out" "$BIN.tmp"
  chmod 0755 "$BIN.tmp"
  mv -f "$BIN.tmp" "$BIN"
}

apt_ensure "${DEB_PACKAGES[@]}"
mkdir -p "$WORK"
fetch_source
unpack_source
swap_vendored_libs
build
if [ "${SCOREOPS_KEEP_BUILD:-0}" != "1" ]; then
  log "removing build tree $WORK (set SCOREOPS_KEEP_BUILD=1 to keep it)"
  rm -rf "$WORK"
fi
log "kube-apiserver $KUBE_VERSION cached at $BIN"
printf '%s\n' "$BIN"
