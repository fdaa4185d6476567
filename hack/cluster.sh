#!/usr/bin/env bash
# A throwaway, real Kubernetes API server on loopback: etcd + kube-apiserver, no kubelet,
# no controller-manager (so no pods and no garbage collection), enough for CRDs, custom
# resources, RBAC, server-side apply, admission, kubectl and helm.
#
# Usage: hack/cluster.sh up DIR       start (or keep) the cluster whose state lives in DIR;
#                                     prints DIR/kubeconfig
#        hack/cluster.sh down DIR     stop it (files in DIR are kept: logs, etcd data)
#        hack/cluster.sh status DIR   exit 0 when it is up and ready
#
# DIR gets: kubeconfig, token, cluster.env (SERVER, ports, pids), pki/, etcd/,
#           etcd.log, kube-apiserver.log, etcd.pid, kube-apiserver.pid.
# Both `up` and `down` are idempotent. The kube-apiserver binary comes from
# hack/kube-apiserver.sh (built once, cached).
#
# Environment: KUBE_APISERVER (use this binary instead of hack/kube-apiserver.sh),
#              ETCD (etcd binary, default: etcd on PATH), CLUSTER_READY_TIMEOUT (s, default 90).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib.sh
. "$HERE/lib.sh"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

[ $# -ge 1 ] || { usage >&2; exit 2; }
cmd="$1"
case "$cmd" in
  -h|--help|help) usage; exit 0 ;;
  up|down|status) ;;
  *) usage >&2; die "unknown command: $cmd" ;;
esac
[ $# -eq 2 ] || die "usage: $0 $cmd DIR"
mkdir -p "$2"
DIR="$(cd "$2" && pwd)"
PKI="$DIR/pki"
ETCD_PIDFILE="$DIR/etcd.pid"
KAS_PIDFILE="$DIR/kube-apiserver.pid"
ETCD_LOG="$DIR/etcd.log"
KAS_LOG="$DIR/kube-apiserver.log"
ENV_FILE="$DIR/cluster.env"
READY_TIMEOUT="${CLUSTER_READY_TIMEOUT:-90}"

# one up/down at a time per DIR (fd 8 is closed in the servers so they do not hold it)
exec 8>"$DIR/.cluster.lock"
flock 8

# owned_pid PIDFILE: true when PIDFILE names a live process started for this DIR
# (guards against a recycled pid after a reboot or a crash).
owned_pid() {
  pid_alive "$1" || return 1
  tr '\0' ' ' <"/proc/$(cat "$1")/cmdline" 2>/dev/null | grep -qF -- "$DIR/"
}

stop_owned() {
  local pidfile="$1" name="$2"
  if [ -s "$pidfile" ] && ! owned_pid "$pidfile"; then
    rm -f "$pidfile"          # stale: the process is gone or the pid was reused
    return 0
  fi
  stop_pidfile "$pidfile" "$name"
}

# https_get PATH: GET PATH on the API server with the admin token; prints the body.
https_get() {
  curl -fsS --max-time 5 --cacert "$PKI/ca.crt" \
    -H "Authorization: Bearer $(cat "$DIR/token")" "$SERVER$1"
}

is_ready() {
  [ -f "$ENV_FILE" ] || return 1
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  owned_pid "$ETCD_PIDFILE" && owned_pid "$KAS_PIDFILE" && [ -f "$DIR/kubeconfig" ] \
    && [ "$(https_get /readyz 2>/dev/null)" = "ok" ]
}

gen_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [ ! -s "$PKI/ca.crt" ] || [ ! -s "$PKI/ca.key" ]; then
    log "generating a cluster CA"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=scoreops-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" >/dev/null 2>&1 \
      || die "openssl could not create the CA"
    rm -f "$PKI/apiserver.crt"
  fi
  if [ ! -s "$PKI/apiserver.crt" ] || [ ! -s "$PKI/apiserver.key" ]; then
    log "generating the API server's serving certificate"
    cat >"$PKI/apiserver.ext" <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$PKI/apiserver.key" \
      -out "$PKI/apiserver.csr" -subj "/CN=kube-apiserver" >/dev/null 2>&1 \
      && openssl x509 -req -sha256 -days 3650 -in "$PKI/apiserver.csr" \
        -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
        -extfile "$PKI/apiserver.ext" -out "$PKI/apiserver.crt" >/dev/null 2>&1 \
      || die "openssl could not create the serving certificate"
  fi
  if [ ! -s "$PKI/sa.key" ] || [ ! -s "$PKI/sa.pub" ]; then
    log "generating the service-account signing key pair"
    openssl genrsa -out "$PKI/sa.key" 2048 >/dev/null 2>&1 \
      && openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" >/dev/null 2>&1 \
      || die "openssl could not create the service-account keys"
  fi
  if [ ! -s "$DIR/token" ]; then
    openssl rand -hex 24 >"$DIR/token"
    chmod 600 "$DIR/token"
  fi
  # user "scoreops-admin" in system:masters: full access under RBAC
  printf '%s,scoreops-admin,scoreops-admin,"system:masters"\n' "$(cat "$DIR/token")" \
    >"$PKI/tokens.csv"
  chmod 600 "$PKI/tokens.csv"
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_ports() {
  # Reuse the previous ports when they are still free (etcd remembers its peer URL).
  ETCD_CLIENT_PORT="" ETCD_PEER_PORT="" SECURE_PORT=""
  if [ -f "$ENV_FILE" ]; then
    # shellcheck disable=SC1090
    . "$ENV_FILE"
  fi
  local p
  for p in ETCD_CLIENT_PORT ETCD_PEER_PORT SECURE_PORT; do
    if [ -z "${!p:-}" ] || ! port_free "${!p}"; then
      printf -v "$p" '%s' "$(free_port)"
    fi
  done
  [ "$ETCD_CLIENT_PORT" != "$ETCD_PEER_PORT" ] || ETCD_PEER_PORT="$(free_port)"
  SERVER="https://127.0.0.1:$SECURE_PORT"
}

write_env() {
  cat >"$ENV_FILE" <<EOF
SERVER=$SERVER
SECURE_PORT=$SECURE_PORT
ETCD_CLIENT_PORT=$ETCD_CLIENT_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
ETCD_PID=$(cat "$ETCD_PIDFILE" 2>/dev/null || true)
KUBE_APISERVER_PID=$(cat "$KAS_PIDFILE" 2>/dev/null || true)
KUBECONFIG=$DIR/kubeconfig
EOF
}

write_kubeconfig() {
  local ca tmp="$DIR/kubeconfig.tmp"
  ca="$(base64 -w0 <"$PKI/ca.crt")"
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: scoreops-local
  cluster:
    server: $SERVER
    certificate-authority-data: $ca
users:
- name: scoreops-admin
  user:
    token: $(cat "$DIR/token")
contexts:
- name: scoreops-local
  context:
    cluster: scoreops-local
    user: scoreops-admin
    namespace: default
current-context: scoreops-local
EOF
  chmod 600 "$tmp"
  mv -f "$tmp" "$DIR/kubeconfig"
}

start_etcd() {
  local etcd_bin="${ETCD:-$(command -v etcd || true)}"
  [ -n "$etcd_bin" ] && [ -x "$etcd_bin" ] || die "etcd not found (Debian package etcd-server)"
  mkdir -p "$DIR/etcd"
  chmod 700 "$DIR/etcd"
  log "starting etcd on 127.0.0.1:$ETCD_CLIENT_PORT"
  setsid "$etcd_bin" --name scoreops --data-dir "$DIR/etcd/" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "scoreops=http://127.0.0.1:$ETCD_PEER_PORT" \
    --listen-metrics-urls "" --logger zap --log-outputs stderr \
    --snapshot-count 10000 --quota-backend-bytes $((2 * 1024 * 1024 * 1024)) \
    </dev/null >>"$ETCD_LOG" 2>&1 8>&- &
  echo $! >"$ETCD_PIDFILE"
  local i
  for i in $(seq 1 $((READY_TIMEOUT * 10))); do
    if ! pid_alive "$ETCD_PIDFILE"; then
      log_tail "$ETCD_LOG"
      die "etcd exited during start-up (log: $ETCD_LOG)"
    fi
    if curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null \
        | grep -q '"health":"true"'; then
      return 0
    fi
    sleep 0.1
  done
  log_tail "$ETCD_LOG"
  die "etcd not healthy after ${READY_TIMEOUT}s (log: $ETCD_LOG)"
}

resolve_apiserver() {
  KAS_BIN="${KUBE_APISERVER:-}"
  if [ -z "$KAS_BIN" ]; then
    KAS_BIN="$("$HERE/kube-apiserver.sh")" || die "could not obtain a kube-apiserver binary"
  fi
  [ -x "$KAS_BIN" ] || die "kube-apiserver binary $KAS_BIN is not executable"
}

start_apiserver() {
  mkdir -p "$DIR/apiserver-certs"
  log "starting kube-apiserver on $SERVER"
  setsid "$KAS_BIN" \
    --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$SECURE_PORT" \
    --cert-dir "$DIR/apiserver-certs/" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --token-auth-file "$PKI/tokens.csv" \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer "https://kubernetes.default.svc.cluster.local" \
    --api-audiences "https://kubernetes.default.svc.cluster.local" \
    --authorization-mode RBAC \
    --service-cluster-ip-range 10.0.0.0/24 \
    --allow-privileged=true \
    --profiling=false \
    --v 1 \
    </dev/null >>"$KAS_LOG" 2>&1 8>&- &
  echo $! >"$KAS_PIDFILE"
  local i body
  for i in $(seq 1 $((READY_TIMEOUT * 5))); do
    if ! pid_alive "$KAS_PIDFILE"; then
      log_tail "$KAS_LOG"
      die "kube-apiserver exited during start-up (log: $KAS_LOG)"
    fi
    body="$(https_get /readyz 2>/dev/null || true)"
    if [ "$body" = "ok" ] && https_get /api/v1/namespaces/default >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  log_tail "$KAS_LOG"
  die "kube-apiserver not ready after ${READY_TIMEOUT}s (log: $KAS_LOG)"
}

do_up() {
  if is_ready; then
    log "already up: $SERVER (state in $DIR)"
    printf '%s\n' "$DIR/kubeconfig"
    return 0
  fi
  # half-started or crashed: clear whatever is left before starting afresh
  stop_owned "$KAS_PIDFILE" kube-apiserver
  stop_owned "$ETCD_PIDFILE" etcd
  local started
  started=$(date +%s.%N)
  apt_ensure etcd-server openssl curl
  resolve_apiserver
  gen_pki
  pick_ports
  # a failed start leaves nothing running behind it
  trap 'stop_owned "$KAS_PIDFILE" kube-apiserver; stop_owned "$ETCD_PIDFILE" etcd' EXIT
  start_etcd
  write_env
  start_apiserver
  trap - EXIT
  write_env
  write_kubeconfig
  log "up in $(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}') s:" \
      "server $SERVER, kubeconfig $DIR/kubeconfig"
  printf '%s\n' "$DIR/kubeconfig"
}

do_down() {
  stop_owned "$KAS_PIDFILE" kube-apiserver
  stop_owned "$ETCD_PIDFILE" etcd
  [ -f "$ENV_FILE" ] && sed -i -e 's/^ETCD_PID=.*/ETCD_PID=/' \
    -e 's/^KUBE_APISERVER_PID=.*/KUBE_APISERVER_PID=/' "$ENV_FILE"
  log "down (state kept in $DIR)"
}

case "$cmd" in
  up) do_up ;;
  down) do_down ;;
  status)
    if is_ready; then
      log "up: $SERVER"
    else
      log "not running (state dir $DIR)"
      exit 1
    fi
    ;;
esac
