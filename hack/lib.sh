# shellcheck shell=bash
# Shared helpers for the hack/ scripts. Source it; do not execute it.
#
#   SCOREOPS_CACHE   where built/downloaded tools are cached (default ~/.cache/scoreops)

SCOREOPS_CACHE="${SCOREOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scoreops}"
KUBE_VERSION="${KUBE_VERSION:-v1.20.2}"

_scoreops_prog="$(basename "${0:-scoreops}")"

log() { printf '[%s] %s\n' "$_scoreops_prog" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$_scoreops_prog" "$*" >&2; exit 1; }

# as_root CMD...: run CMD as root (directly when we are root, else through sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $* (no sudo available)"
  fi
}

# apt_ensure PKG...: install the Debian packages among PKG that are not installed yet.
apt_ensure() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get"
  log "installing Debian packages: ${missing[*]}"
  if ! as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    log "apt-get install failed; refreshing the package index and retrying"
    as_root apt-get update -qq >/dev/null 2>&1 || true
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends "${missing[@]}" \
      || die "could not install: ${missing[*]}"
  fi
}

# free_port: print a TCP port on 127.0.0.1 that is free right now.
free_port() {
  local py
  py="$(command -v python3 || command -v python || true)"
  [ -n "$py" ] || die "python3 is needed to pick a free port"
  "$py" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

# proc_alive PID: true when PID is a running process (a zombie counts as gone).
proc_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != "Z" ]
}

# pid_alive PIDFILE: true when PIDFILE names a running process.
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid="$(cat "$1")"
  [ -n "$pid" ] && proc_alive "$pid"
}

# stop_pidfile PIDFILE NAME: SIGTERM, wait up to 10 s, then SIGKILL; removes PIDFILE.
stop_pidfile() {
  local pidfile="$1" name="$2" pid i
  if [ ! -s "$pidfile" ]; then
    rm -f "$pidfile"
    return 0
  fi
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && proc_alive "$pid"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 200); do
      proc_alive "$pid" || break
      sleep 0.05
    done
    if proc_alive "$pid"; then
      log "$name did not exit after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$pidfile"
}

# log_tail FILE [N]: print the last N lines of FILE to stderr, framed.
log_tail() {
  local f="$1" n="${2:-40}"
  [ -f "$f" ] || return 0
  printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
  tail -n "$n" "$f" >&2
  printf -- '----- end of %s -----\n' "$f" >&2
}
