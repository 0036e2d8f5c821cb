#!/usr/bin/env bash
# The benchmark harness: waitroom against nginx on this machine, in one run.
#   bash benches/run.sh           full run (several minutes)
#   bash benches/run.sh --quick   smoke run (under 2 minutes; what CI runs)
#   bash benches/run.sh [--quick] --only ab   only the scenarios named (letters
#                                 of a–e; e runs beside the ones chosen)
# Installs wrk, nginx and redis-server (Debian packages) when missing.
# Loopback only. Prints two markdown tables: waitroom (embedded store)
# against nginx, and waitroom with the shared Redis store against the
# embedded store, every ratio from runs interleaved in the same minute.
# Redis: the one answering at 127.0.0.1:6379 (keys under a fresh
# bench-<pid>-<random> prefix, deleted at the end), else its own
# redis-server on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0; ONLY=abcde
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY=${2:?--only needs scenario letters, e.g. --only c}; shift ;;
    *) echo "benches/run.sh: unknown argument $1 (--quick, --only LETTERS)" >&2; exit 64 ;;
  esac
  shift
done
want() { [[ "$ONLY" == *"$1"* ]]; }

if ! command -v wrk >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
  else
    echo "benches/run.sh: needs wrk and nginx (apt-get install wrk nginx-light)" >&2
    exit 1
  fi
fi
ulimit -n "$(ulimit -Hn)" || true

if ! command -v redis-server >/dev/null 2>&1 && ! python3 benches/redis.py ping 6379; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "benches/run.sh: needs a Redis at 127.0.0.1:6379 or redis-server (apt-get install redis-server)" >&2
    exit 1
  fi
fi

# SSE_N streams on one gateway process (at most what its open-file limit
# allows); SSE_BIG streams on ⌈SSE_BIG / SSE_N⌉ replicas sharing one Redis,
# each load-generator process holding at most SSE_N of them.
if [ "$QUICK" = 1 ]; then
  DUR=3; REPS=2; CONNS=64; SSE_N=2000; SSE_REPS=1; SSE_BIG=4000; MOVE_SECS=5; DRIP_SECS=8; DRIP_RATES="600 6000"; REDIS_DRIP_RATE=6000
else
  # One process's streams: what its open-file limit leaves beside its own
  # files, at most 18,500 (the most this machine allows) so runs compare.
  FILES=$(ulimit -n)
  case "$FILES" in
    unlimited) SSE_N=18500 ;;
    ''|*[!0-9]*) echo "benches/run.sh: cannot read the open-file limit ($FILES)" >&2; exit 1 ;;
    *) SSE_N=$(( FILES - 1500 < 18500 ? FILES - 1500 : 18500 )) ;;
  esac
  if [ "$SSE_N" -lt 1000 ]; then
    echo "benches/run.sh: the open-file limit ($FILES) is too low for the SSE runs" >&2; exit 1
  fi
  DUR=10; REPS=4; CONNS=64; SSE_REPS=3; SSE_BIG=100000; MOVE_SECS=30; DRIP_SECS=60; DRIP_RATES="600 3000 12000"; REDIS_DRIP_RATE=3000
fi
SSE_BIG_REPLICAS=$(( (SSE_BIG + SSE_N - 1) / SSE_N ))

cargo build --release --quiet --bins --example bare_proxy --example loadgen
# Where cargo put them: CARGO_TARGET_DIR when set (a worktree's own).
RELEASE=${CARGO_TARGET_DIR:-target}/release
BIN=$RELEASE/waitroom
LOADGEN=$RELEASE/examples/loadgen
WORK=$(mktemp -d /tmp/waitroom-bench.XXXXXX)
PIDS=()
REDIS_PORT=""; REDIS_OURS=0; KEY_PREFIX="bench-$$-$RANDOM"
cleanup() {
  [ -n "${KEEP_WORK:-}" ] && rm -rf /tmp/bench-last && cp -r "$WORK" /tmp/bench-last || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  # Somebody else's Redis: take our keys away (never FLUSHALL). Ours died above.
  if [ -n "$REDIS_PORT" ] && [ "$REDIS_OURS" = 0 ]; then
    python3 benches/redis.py drop "$REDIS_PORT" "$KEY_PREFIX" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
UP=$(free_port); PROXY=$(free_port); STATIC=$(free_port); PUB=$(free_port); ADM=$(free_port)
RPUB=$(free_port); RADM=$(free_port); R2PUB=$(free_port); R2ADM=$(free_port); BARE=$(free_port)
SPUB=$(free_port); SADM=$(free_port)
TOKEN=bench-admin-token-0123456789abcdef

# --- Redis for the shared store: an existing one on 6379, else our own.
if python3 benches/redis.py ping 6379; then
  REDIS_PORT=6379
else
  REDIS_PORT=$(free_port); REDIS_OURS=1
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    > "$WORK/redis.out" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 50); do python3 benches/redis.py ping "$REDIS_PORT" && break; sleep 0.1; done
fi

# --- nginx: upstream, reverse-proxy baseline, static baseline
mkdir -p "$WORK/static"
chmod 755 "$WORK" "$WORK/static"  # nginx workers run as www-data
sed -e "s#@WORK@#$WORK#g" -e "s#@UPSTREAM@#$UP#g" -e "s#@PROXY@#$PROXY#g" -e "s#@STATIC@#$STATIC#g" \
  benches/nginx/nginx.conf.template > "$WORK/nginx.conf"

# --- waitroom
gateway_config() { # FILE PUBLIC ADMIN STORE-TABLE-LINES [MORE-TOP-LEVEL-TABLES]
  cat > "$1" <<TOML
[listen]
public = "127.0.0.1:$2"
admin = "127.0.0.1:$3"
[admin]
token = "$TOKEN"
[signing]
keys = [{ kid = "b1", secret = "bench-secret-bench-secret-bench-secret-0123" }]
[store]
$4
${5:-}
[sse]
max_connections = 100000
# The SSE runs put every stream on one token, from a few addresses.
max_streams_per_place = 10000000
max_streams_per_client = 10000000
# All load comes from 127.0.0.x: the per-client join limit would turn the
# arrival spike into a measurement of 429s.
[limits]
joins_per_min_per_client = 0
[[rooms]]
id = "bench"
upstream = "http://127.0.0.1:$UP"
path_prefix = "/"
admit_rate_per_min = 6000000
session_secs = 86400
session_max_secs = 86400
[[rooms]]
id = "spike"
upstream = "http://127.0.0.1:$UP"
path_prefix = "/spike"
admit_rate_per_min = 1
[[rooms]]
id = "sse"
upstream = "http://127.0.0.1:$UP"
path_prefix = "/sse"
admit_rate_per_min = 1
abandon_after_secs = 3600
[[rooms]]
id = "move"
upstream = "http://127.0.0.1:$UP"
path_prefix = "/move"
admit_rate_per_min = 1
abandon_after_secs = 3600
[[rooms]]
id = "drip"
upstream = "http://127.0.0.1:$UP"
path_prefix = "/drip"
admit_rate_per_min = 600
abandon_after_secs = 3600
claim_grace_secs = 600
TOML
}
# wait_ready ADMIN-PORT
wait_ready() {
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "benches/run.sh: a gateway did not start (admin port $1); see its stderr:" >&2
  cat "$WORK"/waitroom*.err >&2
  exit 1
}
gateway_config "$WORK/waitroom.toml" "$PUB" "$ADM" "path = \"$WORK/state\""
# The same rooms on the shared store, under a key prefix no earlier run used.
REDIS_STORE="kind = \"redis\"
url = \"redis://127.0.0.1:$REDIS_PORT\"
key_prefix = \"$KEY_PREFIX\"
on_store_failure = \"hold\"
lease_ms = 2000"
gateway_config "$WORK/waitroom-redis.toml" "$RPUB" "$RADM" "$REDIS_STORE"
gateway_config "$WORK/waitroom-redis2.toml" "$R2PUB" "$R2ADM" "$REDIS_STORE"
# (a) once more with signed admission on: the embedded store makes its key.
gateway_config "$WORK/waitroom-signed.toml" "$SPUB" "$SADM" "path = \"$WORK/state-signed\"" \
  "[admission]
issuer = \"http://127.0.0.1:$SPUB\""
# start_gateway NAME: runs the gateway on $WORK/NAME.toml in the
# background (output in NAME.out / NAME.err); its pid in GW_PID. Its log
# filter is WAITROOM_BENCH_LOG (default warn); with KEEP_WORK=1 the work
# directory, logs included, is copied to /tmp/bench-last. GATEWAY_BIN runs
# the gateways from another build (an A/B against this load generator).
start_gateway() {
  RUST_LOG=${WAITROOM_BENCH_LOG:-warn} "${GATEWAY_BIN:-$BIN}" run --config "$WORK/$1.toml" > "$WORK/$1.out" 2> "$WORK/$1.err" &
  GW_PID=$!; PIDS+=("$GW_PID")
}
start_gateway waitroom; WPID=$GW_PID
start_gateway waitroom-redis; RPID=$GW_PID
if want a; then start_gateway waitroom-signed; SPID=$GW_PID; fi
wait_ready "$ADM"
wait_ready "$RADM"
if want a; then wait_ready "$SADM"; fi

# The static baseline page: exactly the size of waitroom's waiting page.
curl -s "http://127.0.0.1:$PUB/spike/" -H 'Accept: text/html' > "$WORK/static/waiting.html"
PAGE_BYTES=$(wc -c < "$WORK/static/waiting.html")
nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PROXY/" >/dev/null 2>&1 && break; sleep 0.1; done
# The HTTP stack's floor for (a): a proxy made of hyper alone (benches/bare_proxy.rs).
if want a; then
  "$RELEASE/examples/bare_proxy" "127.0.0.1:$BARE" "127.0.0.1:$UP" > "$WORK/bare.out" 2>&1 &
  BARE_PID=$!; PIDS+=("$BARE_PID")
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$BARE/" >/dev/null 2>&1 && break; sleep 0.1; done
  if [ "$(curl -s "http://127.0.0.1:$BARE/")" != ok ]; then
    echo "benches/run.sh: the bare hyper proxy did not reach the upstream; see its output:" >&2
    cat "$WORK/bare.out" >&2
    exit 1
  fi
fi

# An admitted fan's access token for the passthrough runs (one per gateway).
# Access tokens are bound to the claiming client's User-Agent (the rooms'
# default access_binding): the claim and every wrk request send the same one.
UA="waitroom-bench/1"
access_token() {
python3 - "$1" "$UA" <<'PY'
import json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
def call(method, path, token=None):
    req = urllib.request.Request(base + path, method=method)
    req.add_header("User-Agent", sys.argv[2])
    if token: req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req) as r: return json.load(r)
token = call("POST", "/_waitroom/join?room=bench")["token"]
for _ in range(100):
    if call("GET", "/_waitroom/status?room=bench", token)["state"] == "admitted": break
    time.sleep(0.1)
print(call("POST", "/_waitroom/claim?room=bench", token)["access_token"])
PY
}
ACCESS=$(access_token "$PUB")
RACCESS=$(access_token "$RPUB")
PAIRS=("$PUB $ACCESS" "$RPUB $RACCESS")
if want a; then SACCESS=$(access_token "$SPUB"); PAIRS+=("$SPUB $SACCESS"); fi
# The passthrough runs must reach the upstream (its body is "ok"), not a
# waiting page: a refused token would quietly measure arrivals instead.
for pair in "${PAIRS[@]}"; do
  read -r port tok <<<"$pair"
  got=$(curl -s "http://127.0.0.1:$port/" -H "User-Agent: $UA" -H "X-Waitroom-Token: $tok")
  if [ "$got" != "ok" ]; then
    echo "benches/run.sh: the access token was not let through on port $port (got: ${got:0:80})" >&2
    exit 1
  fi
done
# The upstream answers /_bench/admission with the Waitroom-Admission it
# received: a JWS from the signed gateway, nothing from the plain one, or
# the two passthrough runs would not differ by what they claim to.
if want a; then
  ADMISSION=$(curl -s "http://127.0.0.1:$SPUB/_bench/admission" -H "User-Agent: $UA" -H "X-Waitroom-Token: $SACCESS")
  if ! [[ "$ADMISSION" =~ ^eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]]; then
    echo "benches/run.sh: the upstream did not receive Waitroom-Admission from the signed gateway (got: ${ADMISSION:0:80})" >&2
    exit 1
  fi
  got=$(curl -s "http://127.0.0.1:$PUB/_bench/admission" -H "User-Agent: $UA" -H "X-Waitroom-Token: $ACCESS")
  if [ -n "$got" ]; then
    echo "benches/run.sh: the plain gateway sent Waitroom-Admission (got: ${got:0:80})" >&2
    exit 1
  fi
fi

FMT="python3 benches/fmt.py"
# CPU a process has used (user + system), in clock ticks (100 a second).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# wrk → "rps p50_ms p99_ms non2xx", and with CPU_PID set, a fifth column:
# that process's CPU per request in µs (steadier than rps on a shared VM).
run_wrk() {
  local url=$1 before="" row; shift
  if [ -n "${CPU_PID:-}" ]; then before=$(cpu_ticks "$CPU_PID"); fi
  wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "$@" "$url" > "$WORK/wrk.out" 2>&1 || true
  row=$($FMT wrk "$WORK/wrk.out")
  if [ -n "$before" ]; then
    row="$row $($FMT cpu_per_request "$WORK/wrk.out" $(( $(cpu_ticks "$CPU_PID") - before )))"
  fi
  echo "$row"
}

# Interleaved repetitions: on a shared 2-core VM throughput drifts within
# seconds, so each ratio is the median of REPS side-by-side pairs, and the
# spread is printed too. The order flips every repetition (nginx, embedded,
# Redis, then Redis, embedded, nginx): a run right after another one tends
# to do a few percent better, and a fixed order would bias every ratio.
: > "$WORK/n"; : > "$WORK/w"; : > "$WORK/ws"; : > "$WORK/s"; : > "$WORK/a"; : > "$WORK/wr"; : > "$WORK/ar"; : > "$WORK/h"
pass_nginx() { run_wrk "http://127.0.0.1:$PROXY/" -H "User-Agent: $UA" >> "$WORK/n"; }
pass_embedded() { CPU_PID=$WPID run_wrk "http://127.0.0.1:$PUB/" -H "User-Agent: $UA" -H "X-Waitroom-Token: $ACCESS" >> "$WORK/w"; }
pass_signed() { CPU_PID=$SPID run_wrk "http://127.0.0.1:$SPUB/" -H "User-Agent: $UA" -H "X-Waitroom-Token: $SACCESS" >> "$WORK/ws"; }
pass_bare() { CPU_PID=$BARE_PID run_wrk "http://127.0.0.1:$BARE/" -H "User-Agent: $UA" >> "$WORK/h"; }
pass_redis() { if want e; then run_wrk "http://127.0.0.1:$RPUB/" -H "User-Agent: $UA" -H "X-Waitroom-Token: $RACCESS" >> "$WORK/wr"; fi; }
spike_static() { run_wrk "http://127.0.0.1:$STATIC/" >> "$WORK/s"; }
spike_embedded() { run_wrk "http://127.0.0.1:$PUB/spike/" -H 'Accept: text/html' >> "$WORK/a"; }
spike_redis() { if want e; then run_wrk "http://127.0.0.1:$RPUB/spike/" -H 'Accept: text/html' >> "$WORK/ar"; fi; }
for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then
    if want a; then pass_nginx; pass_embedded; pass_signed; pass_bare; pass_redis; fi
    if want b; then spike_static; spike_embedded; spike_redis; fi
  else
    if want a; then pass_redis; pass_bare; pass_signed; pass_embedded; pass_nginx; fi
    if want b; then spike_redis; spike_embedded; spike_static; fi
  fi
done
ratio() { $FMT ratio "$1" "$2"; }

# SSE: embedded and Redis gateways alternately; one JSON line per run.
sse_run() { # PUBLIC ADMIN PID ROOM [MORE LOADGEN ARGUMENTS…]
  local pub=$1 adm=$2 pid=$3 room=$4; shift 4
  # The previous run's streams close within a second or so: let them, so
  # no run starts near the file limit.
  for _ in $(seq 100); do
    [ "$(ls "/proc/$pid/fd" | wc -l)" -lt 1000 ] && break
    sleep 0.1
  done
  "$LOADGEN" sse --public "127.0.0.1:$pub" --admin "127.0.0.1:$adm" --admin-token "$TOKEN" \
    --room "$room" --connections "$SSE_N" --sources 8 --gateway-pid "$pid" "$@" 2>&1 | tail -1
}
# SSE_BIG waiters: more than one process may hold open here, so on
# SSE_BIG_REPLICAS fresh replicas sharing the Redis room, each with an equal
# share of the streams; RSS and CPU are the replicas' sums.
sse_big() {
  local i port adm args=() pids=() admins=()
  for i in $(seq "$SSE_BIG_REPLICAS"); do
    port=$(free_port); adm=$(free_port)
    gateway_config "$WORK/waitroom-big$i.toml" "$port" "$adm" "$REDIS_STORE"
    start_gateway "waitroom-big$i"
    pids+=("$GW_PID"); admins+=("$adm")
    args+=(--public "127.0.0.1:$port" --gateway-pid "$GW_PID")
  done
  for adm in "${admins[@]}"; do wait_ready "$adm"; done
  "$LOADGEN" sse "${args[@]}" --admin "127.0.0.1:${admins[0]}" --admin-token "$TOKEN" \
    --room sse --connections "$SSE_BIG" --per-process "$SSE_N" --sources 32 2>&1 | tail -1
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
# SSE_N fans in their own places (1 … SSE_N) while the drip admits
# MOVE_RATE a minute: the steady cost of a moving line, not one change.
MOVE_RATE=6000
: > "$WORK/sse_e"; : > "$WORK/sse_r"; : > "$WORK/sse_big"; : > "$WORK/sse_move"; : > "$WORK/sse_move_r"
if want c; then
  for _ in $(seq "$SSE_REPS"); do
    sse_run "$PUB" "$ADM" "$WPID" sse >> "$WORK/sse_e"
    if want e; then sse_run "$RPUB" "$RADM" "$RPID" sse >> "$WORK/sse_r"; fi
  done
  sse_run "$PUB" "$ADM" "$WPID" move --moving-secs "$MOVE_SECS" --moving-rate-per-min "$MOVE_RATE" \
    >> "$WORK/sse_move"
  # The same burst of joins on the Redis store: one ARRIVE call per batch.
  if want e; then
    sse_run "$RPUB" "$RADM" "$RPID" move --moving-secs "$MOVE_SECS" --moving-rate-per-min "$MOVE_RATE" \
      >> "$WORK/sse_move_r"
  fi
  sse_big >> "$WORK/sse_big"
fi

DRIP_ROWS=""
if want d; then
  for rate in $DRIP_RATES; do
    J=$("$LOADGEN" drip --public "127.0.0.1:$PUB" --admin "127.0.0.1:$ADM" --admin-token "$TOKEN" \
      --room drip --rate "$rate" --secs "$DRIP_SECS" 2>&1 | tail -1)
    DRIP_ROWS+=$($FMT drip "$J")$'\n'
  done
fi

# The shared drip with two replicas: joins and claims alternate between
# them; one global rate means entries must not add up to twice the rate.
RDRIP_JSON=""
if want d && want e; then
  start_gateway waitroom-redis2
  wait_ready "$R2ADM"
  RDRIP_JSON=$("$LOADGEN" drip --public "127.0.0.1:$RPUB" --also-public "127.0.0.1:$R2PUB" \
    --admin "127.0.0.1:$RADM" --admin-token "$TOKEN" \
    --room drip --rate "$REDIS_DRIP_RATE" --secs "$DRIP_SECS" 2>&1 | tail -1)
fi

echo
echo "## waitroom vs nginx — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t2 -c$CONNS -d${DUR}s, rps: median, and median (min–max) of the ratios of $REPS interleaved pairs in alternating order$([ $QUICK = 1 ] && echo ', quick run')$([ "$ONLY" != abcde ] && echo ", only $ONLY")"
echo
echo "| scenario | waitroom | nginx | ratio |"
echo "| --- | --- | --- | --- |"
if want a; then
  read -r N_RPS N_P50 N_P99 N_BAD <<<"$($FMT median "$WORK/n")"
  read -r W_RPS W_P50 W_P99 W_BAD <<<"$($FMT median "$WORK/w")"
  echo "| a. admitted passthrough rps | $W_RPS | $N_RPS | $($FMT pair_median "$WORK/w" "$WORK/n") (pairs: $($FMT spread "$WORK/w" "$WORK/n"); goal ≥ 0.9) |"
  echo "| a. admitted passthrough p50 / p99 ms | $W_P50 / $W_P99 | $N_P50 / $N_P99 | p99 $(ratio "$W_P99" "$N_P99") (goal ≤ 1.2) |"
  read -r WS_RPS WS_P50 WS_P99 WS_BAD <<<"$($FMT median "$WORK/ws")"
  echo "| a. passthrough, signed admission on (+${#ADMISSION}-byte Waitroom-Admission), rps | $WS_RPS | $N_RPS | $($FMT pair_median "$WORK/ws" "$WORK/n") (pairs: $($FMT spread "$WORK/ws" "$WORK/n")); $($FMT pair_median "$WORK/ws" "$WORK/w")× admission off (pairs: $($FMT spread "$WORK/ws" "$WORK/w")) |"
  echo "| a. passthrough, signed admission on, p50 / p99 ms | $WS_P50 / $WS_P99 | $N_P50 / $N_P99 | p99 $(ratio "$WS_P99" "$N_P99"); $(ratio "$WS_P99" "$W_P99")× admission off |"
  read -r H_RPS H_P50 H_P99 H_BAD <<<"$($FMT median "$WORK/h")"
  echo "| a′. the HTTP stack's floor: a bare hyper proxy, rps | $H_RPS (bare hyper) | $N_RPS | $($FMT pair_median "$WORK/h" "$WORK/n") (pairs: $($FMT spread "$WORK/h" "$WORK/n")) |"
  echo "| a′. waitroom against the bare hyper proxy, rps | $W_RPS | $H_RPS (bare hyper) | $($FMT pair_median "$WORK/w" "$WORK/h") (pairs: $($FMT spread "$WORK/w" "$WORK/h")): waitroom's own cost |"
  W_CPU=$($FMT cpu_median "$WORK/w"); H_CPU=$($FMT cpu_median "$WORK/h")
  echo "| a′. CPU per request in the proxy's own process (user + system), µs | $W_CPU | $H_CPU (bare hyper) | $(ratio "$W_CPU" "$H_CPU")× the floor's (pairs: $($FMT cpu_spread "$WORK/w" "$WORK/h")) |"
  WS_CPU=$($FMT cpu_median "$WORK/ws")
  echo "| a. CPU per request, signed admission on vs off, µs | $WS_CPU (on) | $W_CPU (off) | $(ratio "$WS_CPU" "$W_CPU")× (pairs: $($FMT cpu_spread "$WORK/ws" "$WORK/w")) |"
fi
if want b; then
  read -r S_RPS S_P50 S_P99 S_BAD <<<"$($FMT median "$WORK/s")"
  read -r A_RPS A_P50 A_P99 A_BAD <<<"$($FMT median "$WORK/a")"
  echo "| b. arrival spike rps (new place + ${PAGE_BYTES}-byte page) | $A_RPS | $S_RPS (static page) | $($FMT pair_median "$WORK/a" "$WORK/s") (pairs: $($FMT spread "$WORK/a" "$WORK/s"); goal ≥ 0.5) |"
  echo "| b. arrival spike p50 / p99 ms | $A_P50 / $A_P99 | $S_P50 / $S_P99 | p99 $(ratio "$A_P99" "$S_P99") |"
fi
if want c; then
  $FMT sse "$WORK/sse_e"
  $FMT sse_moving "$WORK/sse_move"
  $FMT sse_big "$WORK/sse_big"
fi
printf '%s' "$DRIP_ROWS"
if want e; then
  echo
  echo "## waitroom: Redis store vs embedded store — same run, $REPS interleaved pairs in alternating order (SSE: $SSE_REPS)"
  echo
  echo "| scenario | Redis store | embedded store | ratio Redis/embedded |"
  echo "| --- | --- | --- | --- |"
  if want a; then
    read -r WR_RPS WR_P50 WR_P99 WR_BAD <<<"$($FMT median "$WORK/wr")"
    echo "| a. admitted passthrough rps | $WR_RPS | $W_RPS | $($FMT pair_median "$WORK/wr" "$WORK/w") (pairs: $($FMT spread "$WORK/wr" "$WORK/w")) |"
    echo "| a. admitted passthrough p50 / p99 ms | $WR_P50 / $WR_P99 | $W_P50 / $W_P99 | p99 $(ratio "$WR_P99" "$W_P99") |"
  fi
  if want b; then
    read -r AR_RPS AR_P50 AR_P99 AR_BAD <<<"$($FMT median "$WORK/ar")"
    echo "| b. arrival spike rps | $AR_RPS | $A_RPS | $($FMT pair_median "$WORK/ar" "$WORK/a") (pairs: $($FMT spread "$WORK/ar" "$WORK/a")) |"
    echo "| b. arrival spike p50 / p99 ms | $AR_P50 / $AR_P99 | $A_P50 / $A_P99 | p99 $(ratio "$AR_P99" "$A_P99") |"
  fi
  if want c; then
    $FMT sse_vs "$WORK/sse_r" "$WORK/sse_e"
    $FMT sse_moving_vs "$WORK/sse_move_r" "$WORK/sse_move"
  fi
  if [ -n "$RDRIP_JSON" ]; then $FMT drip "$RDRIP_JSON"; fi
fi
echo
if want a || want b; then
  echo "non-2xx responses: waitroom passthrough ${W_BAD:--} (signed admission on ${WS_BAD:--}), spike ${A_BAD:--}; Redis-store passthrough ${WR_BAD:--}, spike ${AR_BAD:--}; bare hyper proxy ${H_BAD:--}; nginx proxy ${N_BAD:--}, static ${S_BAD:--}"
fi
echo "Redis: 127.0.0.1:$REDIS_PORT ($([ $REDIS_OURS = 1 ] && echo "started by this run" || echo "already running")), key prefix $KEY_PREFIX"
if want c; then
  echo "fd limit $(ulimit -n); SSE raw (embedded): $(tr '\n' ' ' < "$WORK/sse_e")"
  if want e; then echo "SSE raw (Redis): $(tr '\n' ' ' < "$WORK/sse_r")"; fi
  echo "SSE raw ($SSE_BIG_REPLICAS replicas): $(tr '\n' ' ' < "$WORK/sse_big")"
fi
