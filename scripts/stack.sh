#!/usr/bin/env bash
# Local backing services for CheXVision, without docker:
#   kafka: tansu (Kafka-protocol broker); in-memory storage by default (see below)
#   s3:    garage (S3-compatible object store), single node, bucket "chexvision"
#
# Usage: scripts/stack.sh <command>
#   install          cargo-install tansu / garage if missing (first run: see docs/architecture.md)
#   up               install, start both servers (idempotent), wait, print env
#   down             stop both (SIGINT/SIGTERM, SIGKILL after 10 s); data is kept
#   clean            down + delete the state dir
#   env              print `export` lines for clients: eval "$(scripts/stack.sh env)"
#   status           report each server; exit 0 only if both are up and answering
#   restart kafka|s3 stop and start one server, wait until it answers
#   stop kafka|s3    stop one server (an outage); `start kafka|s3` brings it back
#
# Only `env` and `up` write to stdout (the export lines); everything else is stderr.
#
# Environment:
#   CHEXVISION_STACK_DIR            state dir (default: <repo>/.stack)
#   CHEXVISION_STACK_KAFKA_PORT     default 9092
#   CHEXVISION_STACK_S3_PORT        default 3900 (S3 API)
#   CHEXVISION_STACK_S3_RPC_PORT    default 3901 (garage internal RPC)
#   CHEXVISION_STACK_S3_ADMIN_PORT  default 3903 (garage admin API, /health)
#   CHEXVISION_STACK_TIMEOUT        seconds to wait for a server to answer (default 60)
#   CHEXVISION_STACK_KAFKA_STORAGE  tansu storage engine (default memory://tansu/;
#                                   sqlite://tansu.db keeps data across restarts)
#   CHEXVISION_STACK_KAFKA_LOG      RUST_LOG for tansu (default warn)
#   CHEXVISION_STACK_S3_LOG         RUST_LOG for garage (default garage=info)
#
# State dir layout:
#   stack.env           generated secrets + the ports in use (reused on every start)
#   kafka/tansu.db      broker data (topics, messages, committed offsets)
#   kafka/tansu.{pid,log}
#   s3/garage.toml      regenerated on each start from stack.env
#   s3/meta, s3/data    garage metadata and objects
#   s3/garage.{pid,log}
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${CHEXVISION_STACK_DIR:-$ROOT/.stack}"
STATE_FILE="$STACK_DIR/stack.env"
KAFKA_DIR="$STACK_DIR/kafka"
S3_DIR="$STACK_DIR/s3"
BUCKET="chexvision"
REGION="garage"
HOST="127.0.0.1" # loopback only: nothing here is meant to be reachable from outside
TIMEOUT="${CHEXVISION_STACK_TIMEOUT:-60}"

# cargo install puts binaries here; a fresh shell may not have it on PATH yet.
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

# tansu logs to stdout and honours RUST_LOG; keep the caller's RUST_LOG (a
# test may run with debug) out of our own short tansu invocations.
quiet_tansu() { RUST_LOG=off NO_COLOR=1 tansu "$@"; }

hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; } # $1 random bytes as hex

# ---------------------------------------------------------------- install

need_cargo() { command -v cargo >/dev/null || die "cargo not found; install Rust (rustup) first"; }

# Pinned: the versions the stack script and its workarounds were written for.
TANSU_VERSION="0.6.0"
GARAGE_VERSION="2.5.0"

# Test servers, not production ones: built at opt-level 1 without debug info
# instead of the crates' release profile (opt-level 3), which roughly halves
# the cold install on 2 cores (docs/architecture.md, "CI budget"). Cargo's
# profile variables override a package's own profile.
# CHEXVISION_STACK_OPT_LEVEL=3 builds them as their authors ship them.
cheap_install() {
  CARGO_PROFILE_RELEASE_OPT_LEVEL="${CHEXVISION_STACK_OPT_LEVEL:-1}" \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_BUILD_OVERRIDE_OPT_LEVEL=0 \
    cargo install --locked "$@" >&2
}

install_tools() {
  if ! command -v tansu >/dev/null; then
    need_cargo
    log "installing tansu $TANSU_VERSION (cargo install)..."
    cheap_install tansu --version "$TANSU_VERSION" --features libsql,dynostore
  elif ! quiet_tansu --help 2>/dev/null | grep -q 'Storage engines:.*libsql'; then
    # A tansu built without libsql can only keep data in memory, which would
    # break the "broker restart loses nothing" guarantee: rebuild it.
    log "tansu on PATH lacks the libsql (sqlite) storage engine; reinstalling..."
    need_cargo
    cheap_install tansu --version "$TANSU_VERSION" --force --features libsql,dynostore
  fi
  if ! command -v garage >/dev/null; then
    log "installing garage $GARAGE_VERSION (cargo install)..."
    need_cargo
    # Only what the stack uses: the LMDB metadata engine (garage.toml) and
    # no SQLite engine, K2V API or metrics exporter. With Debian's libsodium
    # and zstd (libsodium-dev, libzstd-dev) it links those instead of
    # configuring and compiling its bundled copies.
    local features=lmdb
    pkg-config --exists libsodium libzstd 2>/dev/null && features=lmdb,system-libs
    cheap_install garage --version "$GARAGE_VERSION" --no-default-features --features "$features"
  fi
  log "tools: $(quiet_tansu --version 2>/dev/null | head -n1), $(RUST_LOG=off garage --version 2>/dev/null | head -n1)"
}

# ---------------------------------------------------------------- state

# Ports: explicit env var > value recorded in the state dir > default.
# Recording them means `env` / `status` / `restart` agree with what `up` used.
load_state() {
  local rec_kafka="" rec_s3="" rec_rpc="" rec_admin=""
  GARAGE_RPC_SECRET="" GARAGE_ADMIN_TOKEN="" S3_ACCESS_KEY="" S3_SECRET_KEY=""
  if [[ -f "$STATE_FILE" ]]; then
    # shellcheck disable=SC1090
    source "$STATE_FILE"
    rec_kafka="${KAFKA_PORT:-}" rec_s3="${S3_PORT:-}" rec_rpc="${S3_RPC_PORT:-}" rec_admin="${S3_ADMIN_PORT:-}"
  fi
  declare -gA RECORDED_PORTS=([kafka]="$rec_kafka" [s3]="$rec_s3 $rec_rpc $rec_admin")
  KAFKA_PORT="${CHEXVISION_STACK_KAFKA_PORT:-${rec_kafka:-9092}}"
  S3_PORT="${CHEXVISION_STACK_S3_PORT:-${rec_s3:-3900}}"
  S3_RPC_PORT="${CHEXVISION_STACK_S3_RPC_PORT:-${rec_rpc:-3901}}"
  S3_ADMIN_PORT="${CHEXVISION_STACK_S3_ADMIN_PORT:-${rec_admin:-3903}}"
}

# Secrets are generated once and then reused, so garage keeps accepting the
# same keys (and its node identity / RPC secret) across restarts.
# $1 = the server about to start: only its ports are updated; the other one
# keeps its recorded ports, since it may still be running on them.
save_state() {
  local name="$1" k=$KAFKA_PORT s=$S3_PORT r=$S3_RPC_PORT a=$S3_ADMIN_PORT
  if [[ "$name" != kafka && -n "${RECORDED_PORTS[kafka]}" ]]; then
    k="${RECORDED_PORTS[kafka]}"
  fi
  if [[ "$name" != s3 && -n "${RECORDED_PORTS[s3]// /}" ]]; then
    read -r s r a <<<"${RECORDED_PORTS[s3]}"
  fi
  RECORDED_PORTS=([kafka]="$k" [s3]="$s $r $a")
  mkdir -p "$STACK_DIR"
  : "${GARAGE_RPC_SECRET:=$(hex 32)}"
  : "${GARAGE_ADMIN_TOKEN:=$(hex 32)}"
  : "${S3_ACCESS_KEY:=GK$(hex 12)}"
  : "${S3_SECRET_KEY:=$(hex 32)}"
  local tmp="$STATE_FILE.tmp"
  (
    umask 077
    cat >"$tmp" <<EOF
# generated by scripts/stack.sh; delete with \`scripts/stack.sh clean\`
KAFKA_PORT=$k
S3_PORT=$s
S3_RPC_PORT=$r
S3_ADMIN_PORT=$a
GARAGE_RPC_SECRET=$GARAGE_RPC_SECRET
GARAGE_ADMIN_TOKEN=$GARAGE_ADMIN_TOKEN
S3_ACCESS_KEY=$S3_ACCESS_KEY
S3_SECRET_KEY=$S3_SECRET_KEY
EOF
  )
  mv "$tmp" "$STATE_FILE"
}

# Serialise concurrent invocations (e.g. two test binaries calling `up`).
# fd 9 is closed in the servers we spawn (see spawn), else they'd hold the lock.
take_lock() {
  mkdir -p "$STACK_DIR"
  exec 9>"$STACK_DIR/.lock"
  flock -w 600 9 || die "timed out waiting for the lock on $STACK_DIR/.lock"
}

# ---------------------------------------------------------------- processes

pid_file() { case "$1" in kafka) echo "$KAFKA_DIR/tansu.pid" ;; s3) echo "$S3_DIR/garage.pid" ;; esac; }
log_file() { case "$1" in kafka) echo "$KAFKA_DIR/tansu.log" ;; s3) echo "$S3_DIR/garage.log" ;; esac; }
binary()   { case "$1" in kafka) echo tansu ;; s3) echo garage ;; esac; }
main_port() { case "$1" in kafka) echo "$KAFKA_PORT" ;; s3) echo "$S3_PORT" ;; esac; }
ports_of() { case "$1" in kafka) echo "$KAFKA_PORT" ;; s3) echo "$S3_PORT $S3_RPC_PORT $S3_ADMIN_PORT" ;; esac; }

# True if pid $1 no longer exists or is a zombie.
proc_gone() {
  local state
  state="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || true
  [[ -z "$state" || "$state" == Z || "$state" == X ]]
}

# True if $1 is a live (non-zombie) process whose argv[0] is our binary $2.
# Checking argv[0] means a stale pid file whose number was reused by an
# unrelated process is not mistaken for our server. Zombies count as dead: the
# servers are re-parented to PID 1, which in containers may never reap them.
pid_alive() {
  local pid="$1" bin="$2" argv0=""
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  ! proc_gone "$pid" || return 1
  IFS= read -r -d '' argv0 <"/proc/$pid/cmdline" 2>/dev/null || true
  [[ "${argv0##*/}" == "$bin" ]]
}

# Prints the pid of the running server $1, or fails.
running_pid() {
  local f pid
  f="$(pid_file "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null)" || return 1
  pid_alive "$pid" "$(binary "$1")" || return 1
  echo "$pid"
}

# garage insists on this header; curl signs it but does not add it itself.
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Does server $1 answer a real request (not just accept TCP)?
answers() {
  case "$1" in
    kafka)
      # `tansu topic list` retries forever while nothing listens, hence the
      # cheap port probe first and the timeout.
      port_open "$KAFKA_PORT" &&
        timeout 10 env RUST_LOG=off tansu topic list --broker "tcp://$HOST:$KAFKA_PORT" >/dev/null 2>&1
      ;;
    s3)
      # /health only says the node is up; a signed ListObjects on the bucket
      # also proves the default key and bucket exist.
      curl -fsS -m 5 -o /dev/null "http://$HOST:$S3_ADMIN_PORT/health" 2>/dev/null &&
        curl -fsS -m 5 -o /dev/null \
          --aws-sigv4 "aws:amz:$REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
          -H "x-amz-content-sha256: $EMPTY_SHA256" \
          "http://$HOST:$S3_PORT/$BUCKET?list-type=2&max-keys=1" 2>/dev/null
      ;;
  esac
}

show_log_tail() {
  local f
  f="$(log_file "$1")"
  if [[ -s "$f" ]]; then
    printf -- '----- last 40 lines of %s -----\n' "$f" >&2
    tail -n 40 "$f" >&2
    printf -- '-----\n' >&2
  fi
}

# Start $1 in the background with argv "${@:2}" and cwd = its state folder.
# setsid: own session, so a Ctrl-C / SIGHUP aimed at the caller (a terminal,
# a test harness) does not take the server down with it. The wrapper shell
# writes its own pid and then execs, so the pid file is exactly the server's.
# stdio goes to the log: a server must not hold a caller's pipes open.
spawn() {
  local name="$1" dir pidf logf
  shift
  dir="$(dirname "$(pid_file "$name")")"
  pidf="$(pid_file "$name")"
  logf="$(log_file "$name")"
  mkdir -p "$dir"
  rm -f "$pidf"
  [[ -f "$logf" ]] && mv -f "$logf" "$logf.1" # keep one previous run's log
  (
    cd "$dir"
    # Close every inherited fd above stderr (our lock on fd 9, and whatever
    # pipes the caller leaked to us): a long-lived server must not hold them.
    for fd in "/proc/$BASHPID/fd/"*; do
      fd="${fd##*/}"
      if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    # shellcheck disable=SC2016 # $$ and $@ are for the inner sh
    setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$@" </dev/null >"$logf" 2>&1 &
  )
  # Wait until the wrapper has written the pid file and exec'd the server.
  local pid
  for _ in $(seq 100); do
    running_pid "$name" >/dev/null && return 0
    pid="$(cat "$pidf" 2>/dev/null)" || pid=""
    [[ -n "$pid" ]] && proc_gone "$pid" && break # died early: no need to wait
    sleep 0.1
  done
  [[ -n "$pid" ]] && ! proc_gone "$pid" && kill -KILL "$pid" 2>/dev/null # never leave a stray
  show_log_tail "$name"
  die "$name: process did not start (pid file $pidf, log $logf)"
}

wait_ready() {
  local name="$1" deadline=$((SECONDS + TIMEOUT))
  while ! answers "$name"; do
    if ! running_pid "$name" >/dev/null; then
      show_log_tail "$name"
      die "$name: server exited during startup (log: $(log_file "$name"))"
    fi
    if ((SECONDS >= deadline)); then
      show_log_tail "$name"
      stop_one "$name" # a half-started server would only confuse the next `up`
      die "$name: not answering after ${TIMEOUT}s (log: $(log_file "$name"))"
    fi
    sleep 0.5
  done
}

write_garage_toml() {
  mkdir -p "$S3_DIR/meta" "$S3_DIR/data"
  cat >"$S3_DIR/garage.toml" <<EOF
# generated by scripts/stack.sh on every start; edit the script, not this file
metadata_dir = "$S3_DIR/meta"
data_dir = "$S3_DIR/data"
db_engine = "lmdb"
replication_factor = 1

rpc_bind_addr = "$HOST:$S3_RPC_PORT"
rpc_public_addr = "$HOST:$S3_RPC_PORT"
rpc_secret = "$GARAGE_RPC_SECRET"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "$HOST:$S3_PORT"

[admin]
api_bind_addr = "$HOST:$S3_ADMIN_PORT"
admin_token = "$GARAGE_ADMIN_TOKEN"
EOF
  chmod 600 "$S3_DIR/garage.toml"
}

start_one() {
  local name="$1" pid p
  if pid="$(running_pid "$name")"; then
    [[ "${RECORDED_PORTS[$name]}" == "$(ports_of "$name")" ]] ||
      die "$name: already running (pid $pid) on port(s) ${RECORDED_PORTS[$name]}, not $(ports_of "$name");" \
        "run '$0 down' first to change ports"
    log "$name: already running (pid $pid)"
    wait_ready "$name"
    return 0
  fi
  # Something else on our port would make the server fail with a less obvious
  # message (or, worse, make a foreign server look like ours).
  for p in $(ports_of "$name"); do
    port_open "$p" && die "$name: port $p on $HOST is already in use by another process" \
      "(set CHEXVISION_STACK_* ports to move it)"
  done
  save_state "$name" # records the ports this server is started with
  command -v "$(binary "$name")" >/dev/null || die "$(binary "$name") not installed; run: $0 install"
  log "$name: starting..."
  case "$name" in
    kafka)
      # memory:// by default: tansu 0.6's sqlite engine serves fetches that
      # span several partitions about 50x slower (10,000 records over 4
      # partitions: ~30 s against 0.6 s) and stalls consumer groups, so the
      # stack forgets topics when the broker restarts (services recreate
      # them at start). sqlite://tansu.db (relative to the kafka folder)
      # keeps topics, messages and committed offsets; the broker-restart test
      # runs its own sqlite broker. A fixed cluster id keeps it stable.
      # The caller's environment must not leak in: tansu reads SCHEMA_REGISTRY
      # and OTEL_EXPORTER_OTLP_ENDPOINT, and a test's RUST_LOG=debug would make
      # it log every request. It also loads a `.env` from its cwd or any parent
      # (so the repo's); an empty one in the kafka folder stops that search.
      mkdir -p "$KAFKA_DIR" && : >>"$KAFKA_DIR/.env"
      spawn kafka env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
        RUST_LOG="${CHEXVISION_STACK_KAFKA_LOG:-warn}" NO_COLOR=1 tansu broker \
        --cluster-id chexvision \
        --listener-url "tcp://$HOST:$KAFKA_PORT" \
        --advertised-listener-url "tcp://$HOST:$KAFKA_PORT" \
        --storage-engine "${CHEXVISION_STACK_KAFKA_STORAGE:-memory://tansu/}"
      ;;
    s3)
      write_garage_toml
      # --single-node assigns the one-node layout, --default-bucket creates the
      # key and bucket from these variables; both are no-ops on a restart.
      GARAGE_DEFAULT_ACCESS_KEY="$S3_ACCESS_KEY" \
        GARAGE_DEFAULT_SECRET_KEY="$S3_SECRET_KEY" \
        GARAGE_DEFAULT_BUCKET="$BUCKET" \
        RUST_LOG="${CHEXVISION_STACK_S3_LOG:-garage=info}" NO_COLOR=1 \
        spawn s3 garage -c "$S3_DIR/garage.toml" server --single-node --default-bucket
      ;;
  esac
  wait_ready "$name"
  log "$name: up (pid $(running_pid "$name"), port $(main_port "$name"))"
}

stop_one() {
  local name="$1" pid
  if ! pid="$(running_pid "$name")"; then
    rm -f "$(pid_file "$name")"
    log "$name: not running"
    return 0
  fi
  log "$name: stopping (pid $pid)..."
  # tansu 0.6: on SIGTERM it cancels its storage at once but keeps client
  # connections open for a 5 s grace period, answering every Produce with a
  # non-retriable UNKNOWN error, so a producer streaming through a restart
  # loses messages. On SIGINT it drops connections immediately (clients see a
  # disconnect and retry). Its sqlite commits are atomic, so nothing acked is
  # lost either way. garage gets the conventional SIGTERM.
  local sig=TERM
  [[ "$name" == kafka ]] && sig=INT
  kill -"$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 100); do pid_alive "$pid" "$(binary "$name")" || break; sleep 0.1; done
  if pid_alive "$pid" "$(binary "$name")"; then
    log "$name: still running after 10s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do pid_alive "$pid" "$(binary "$name")" || break; sleep 0.1; done
    pid_alive "$pid" "$(binary "$name")" && die "$name: pid $pid survived SIGKILL"
  fi
  # Wait for the listening sockets to go away so an immediate start can bind.
  local p
  for p in ${RECORDED_PORTS[$name]:-$(ports_of "$name")}; do
    for _ in $(seq 50); do port_open "$p" || break; sleep 0.1; done
  done
  rm -f "$(pid_file "$name")"
  log "$name: stopped"
}

# ---------------------------------------------------------------- commands

print_env() {
  cat <<EOF
export CHEXVISION_BUS=kafka://$HOST:$KAFKA_PORT
export CHEXVISION_STORE=s3://$BUCKET
export CHEXVISION_S3__ENDPOINT=http://$HOST:$S3_PORT
export CHEXVISION_S3__REGION=$REGION
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
EOF
}

cmd_status() {
  local name pid rc=0
  for name in kafka s3; do
    if pid="$(running_pid "$name")"; then
      if answers "$name"; then
        log "$name: up (pid $pid, $HOST:$(main_port "$name"))"
      else
        log "$name: running (pid $pid) but NOT answering on $HOST:$(main_port "$name"); see $(log_file "$name")"
        rc=1
      fi
    else
      log "$name: down"
      rc=1
    fi
  done
  return "$rc"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    install)
      install_tools
      ;;
    up)
      install_tools
      take_lock
      load_state
      start_one kafka
      start_one s3
      print_env
      ;;
    down)
      [[ -d "$STACK_DIR" ]] || { log "no state dir $STACK_DIR: nothing running"; return 0; }
      take_lock
      load_state
      stop_one kafka
      stop_one s3
      ;;
    clean)
      [[ -d "$STACK_DIR" ]] || { log "no state dir $STACK_DIR: nothing to clean"; return 0; }
      take_lock
      load_state
      stop_one kafka
      stop_one s3
      # Guard against CHEXVISION_STACK_DIR pointing somewhere precious before
      # rm -rf: only delete a dir holding nothing but what this script creates.
      local entry
      for entry in "$STACK_DIR"/* "$STACK_DIR"/.[!.]*; do
        [[ -e "$entry" ]] || continue
        case "${entry##*/}" in
          .lock | stack.env | stack.env.tmp | kafka | s3) ;;
          *) die "refusing to delete $STACK_DIR: it contains ${entry##*/}, which this script did not create" ;;
        esac
      done
      rm -rf "$STACK_DIR"
      log "removed $STACK_DIR"
      ;;
    env)
      load_state
      [[ -f "$STATE_FILE" ]] || die "no state in $STACK_DIR yet; run: $0 up"
      print_env
      ;;
    status)
      load_state
      cmd_status
      ;;
    restart)
      local name="${1:-}"
      [[ "$name" == kafka || "$name" == s3 ]] || die "usage: $0 restart kafka|s3"
      install_tools
      take_lock
      load_state
      stop_one "$name"
      start_one "$name"
      ;;
    stop | start)
      # One server down (an outage in a fault test), then up again.
      local name="${1:-}"
      [[ "$name" == kafka || "$name" == s3 ]] || die "usage: $0 $cmd kafka|s3"
      install_tools
      take_lock
      load_state
      "${cmd}_one" "$name"
      ;;
    -h | --help | help) usage ;;
    "") usage ;;
    *) log "unknown command: $cmd"; usage ;;
  esac
}

main "$@"
