#!/usr/bin/env bash
# Router benchmark, all on loopback (127.0.0.1), in one run:
#   HTTP  wrk against the same tiny backend three ways: direct; through nginx (reverse
#         proxy, keep-alive to the backend); through our router. req/s, p50, p99,
#         and the serving process's CPU time per request.
#   TCP   bulk transfer to the same sink through haproxy (TCP mode) and through our
#         TCP router (and direct, for reference). MB/s, 1 and 4 streams.
#   Route change  time from a backend change committed in the store to the first
#         request served by the new backend (router and store in one process).
#   Flood  one workload's HTTP latency (wrk) and store write latency while another
#         process floods another workload's TCP port with connections.
# Prints a Markdown report (docs/benchmarks.md, section "Router", holds a run).
#
# Usage: scripts/bench-router.sh [--short] [--strict]
#   --short   CI mode: 2 s wrk runs, 1 round, 1 s transfers, 20 route changes, 1 s
#             flood phases.
#   --strict  exit 1 when a target is missed (by default only failures exit non-zero).
# Environment: WRK_THREADS (2), WRK_CONNECTIONS (64), WRK_DURATION, ROUNDS, and
# BENCH_EXE (a bench binary built earlier, to compare two builds).
#
# Installs wrk, nginx and haproxy with apt-get when missing (as root, or via sudo).
# The packages' own services are not started (policy-rc.d) and not used: every
# process here runs from a generated config in a temporary directory, on free ports,
# and is stopped on exit.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
short=0
strict=0
for arg in "$@"; do
  case "$arg" in
    --short) short=1 ;;
    --strict) strict=1 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$short" = 1 ]; then
  wrk_duration="${WRK_DURATION:-2s}"; warmup=1s; rounds="${ROUNDS:-1}"
  tcp_seconds=1; route_iterations=20; flood_seconds=1
else
  wrk_duration="${WRK_DURATION:-10s}"; warmup=2s; rounds="${ROUNDS:-3}"
  tcp_seconds=5; route_iterations=200; flood_seconds=5
fi
wrk_threads="${WRK_THREADS:-2}"
wrk_connections="${WRK_CONNECTIONS:-64}"
tcp_streams=(1 4)

log() { echo "bench-router: $*" >&2; }
die() { echo "bench-router: error: $*" >&2; exit 1; }

# ---- tools ----
PATH="$PATH:/usr/sbin:/sbin"
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null ||
    die "missing ${missing[*]} and apt-get is not available; install them (Debian packages: wrk nginx haproxy) and run again"
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "missing ${missing[*]}; installing needs root (or sudo)"
    sudo=(sudo)
  fi
  log "installing ${missing[*]} with apt-get"
  # Keep the packages from starting their own services (nginx would take port 80).
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 0755 "$policy"
    made_policy=1
  fi
  install_status=0
  {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  } >&2 || install_status=$?
  if [ "$made_policy" = 1 ]; then "${sudo[@]}" rm -f "$policy"; fi
  [ "$install_status" = 0 ] || die "apt-get could not install ${missing[*]}"
  # Where policy-rc.d is not honoured, stop what the packages started.
  for service in nginx haproxy; do
    case " ${missing[*]} " in
      *" $service "*) "${sudo[@]}" service "$service" stop >/dev/null 2>&1 || true ;;
    esac
  done
fi
for tool in wrk nginx haproxy; do
  command -v "$tool" >/dev/null || die "$tool is still missing after installation"
done

# ---- the bench binary (release) ----
# BENCH_EXE runs a bench binary built earlier instead (to compare two builds).
exe="${BENCH_EXE:-}"
if [ -z "$exe" ]; then
  log "building the router bench binary (release)"
  exe="$(cd "$root" && cargo bench -p computearbitrage --bench router --no-run \
    --message-format=json-render-diagnostics |
    grep '"reason":"compiler-artifact"' | grep '"kind":\["bench"\]' | grep '"name":"router"' |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)" || true
fi
[ -n "$exe" ] && [ -x "$exe" ] || die "could not find the built bench executable"

# ---- processes, cleaned up on exit ----
work="$(mktemp -d "${TMPDIR:-/tmp}/bench-router.XXXXXX")"
pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" != 0 ]; then
    for f in "$work"/*.log; do
      [ -s "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_port() { # port name
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  die "$2 did not listen on 127.0.0.1:$1"
}

read -r backend_port sink_port nginx_port haproxy_port router_port tcp_port <<<"$("$exe" free-ports 6)"

"$exe" backend --listen "127.0.0.1:$backend_port" >"$work/backend.log" 2>&1 &
pids+=($!)
backend_pid=$!
"$exe" tcp-sink --listen "127.0.0.1:$sink_port" >"$work/sink.log" 2>&1 &
pids+=($!)

mkdir -p "$work/nginx"
nginx_user=""
if [ "$(id -u)" = 0 ]; then nginx_user="user $(id -un) $(id -gn);"; fi
cat >"$work/nginx.conf" <<EOF
$nginx_user
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  upstream backend {
    server 127.0.0.1:$backend_port;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
nginx -p "$work/nginx" -e "$work/nginx.log" -c "$work/nginx.conf" >"$work/nginx-out.log" 2>&1 &
pids+=($!)
nginx_pid=$!

cat >"$work/haproxy.cfg" <<EOF
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend bulk
  bind 127.0.0.1:$haproxy_port
  default_backend sink
backend sink
  server sink 127.0.0.1:$sink_port
EOF
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)

"$exe" router --backend "127.0.0.1:$backend_port" --tcp-backend "127.0.0.1:$sink_port" \
  --listen "127.0.0.1:$router_port" --tcp-port "$tcp_port" >"$work/router.json" 2>"$work/router.log" &
pids+=($!)
router_pid=$!

wait_port "$backend_port" backend
wait_port "$sink_port" "TCP sink"
wait_port "$nginx_port" nginx
wait_port "$haproxy_port" haproxy
for _ in $(seq 200); do [ -s "$work/router.json" ] && break; sleep 0.05; done
[ -s "$work/router.json" ] || die "the router did not start"
workload="$(sed -n 's/.*"workload_id":"\([^"]*\)".*/\1/p' "$work/router.json")"
token="$(sed -n 's/.*"token":"\([^"]*\)".*/\1/p' "$work/router.json")"
wait_port "$router_port" router
wait_port "$tcp_port" "router TCP listener"

# Every request carries the router's headers, so all three get identical requests.
headers=(-H "X-Workload-Id: $workload" -H "Authorization: Bearer $token")
declare -A url=(
  [direct]="http://127.0.0.1:$backend_port/"
  [nginx]="http://127.0.0.1:$nginx_port/"
  [router]="http://127.0.0.1:$router_port/"
)
for config in direct nginx router; do
  "$exe" probe --url "${url[$config]}" --header "X-Workload-Id: $workload" \
    --header "Authorization: Bearer $token" --expect hello >/dev/null ||
    die "$config does not answer through ${url[$config]}"
done

load_before="$(cut -d ' ' -f 1-3 /proc/loadavg)"

# ---- HTTP ----
to_ms() { # wrk duration (123.45us, 1.20ms, 1.00s, 1.00m) -> ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else { printf "nan" } }'
}
# CPU time (clock ticks) used so far by the server of a configuration: the backend
# for direct, nginx's workers, the router process.
server_pids() {
  case "$1" in
    direct) echo "$backend_pid" ;;
    nginx) awk -v p="$nginx_pid" '$4 == p { printf "%s ", $1 }' /proc/[0-9]*/stat 2>/dev/null ;;
    router) echo "$router_pid" ;;
  esac
}
cpu_ticks() { # pid...
  local total=0 pid
  for pid in "$@"; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
  echo "$total"
}
ticks_per_second="$(getconf CLK_TCK)"
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A rps p50 p99 cpu
wrk_args=(-t"$wrk_threads" -c"$wrk_connections" --latency "${headers[@]}")
log "HTTP: wrk ${wrk_args[*]:0:2} -d$wrk_duration, $rounds round(s), configurations in turn"
for round in $(seq "$rounds"); do
  for config in direct nginx router; do
    wrk "${wrk_args[@]}" -d"$warmup" "${url[$config]}" >/dev/null
    out="$work/wrk-$config-$round.txt"
    # shellcheck disable=SC2046
    before="$(cpu_ticks $(server_pids "$config"))"
    wrk "${wrk_args[@]}" -d"$wrk_duration" "${url[$config]}" >"$out"
    # shellcheck disable=SC2046
    after="$(cpu_ticks $(server_pids "$config"))"
    if grep -q -e 'Non-2xx or 3xx responses' -e 'Socket errors' "$out"; then
      cat "$out" >&2
      die "$config: wrk saw errors"
    fi
    r="$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
    a="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")"
    b="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
    requests="$(awk '/requests in/ { print $1 }' "$out")"
    c="$(awk -v t="$((after - before))" -v hz="$ticks_per_second" -v n="$requests" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }')"
    log "  round $round $config: $r req/s, p50 $a ms, p99 $b ms, server CPU $c µs/request"
    rps[$config]+=" $r"; p50[$config]+=" $a"; p99[$config]+=" $b"; cpu[$config]+=" $c"
  done
done
for config in direct nginx router; do
  rps[$config]="$(echo "${rps[$config]}" | median)"
  p50[$config]="$(echo "${p50[$config]}" | median)"
  p99[$config]="$(echo "${p99[$config]}" | median)"
  cpu[$config]="$(echo "${cpu[$config]}" | median)"
done

# ---- TCP ----
declare -A tcp
declare -A tcp_target=([direct]="127.0.0.1:$sink_port" [haproxy]="127.0.0.1:$haproxy_port" [router]="127.0.0.1:$tcp_port")
log "TCP: ${tcp_seconds} s transfers, ${tcp_streams[*]} stream(s), $rounds round(s)"
for round in $(seq "$rounds"); do
  for streams in "${tcp_streams[@]}"; do
    for config in direct haproxy router; do
      line="$("$exe" tcp-send --connect "${tcp_target[$config]}" --streams "$streams" --seconds "$tcp_seconds" | grep '^RESULT')" ||
        die "TCP transfer through $config failed"
      m="$(echo "$line" | sed -n 's/.*mb_per_s=\([0-9.]*\).*/\1/p')"
      log "  round $round $config, $streams stream(s): $m MB/s"
      tcp[$config,$streams]+=" $m"
    done
  done
done
for key in "${!tcp[@]}"; do tcp[$key]="$(echo "${tcp[$key]}" | median)"; done

# ---- route change ----
log "route change: $route_iterations changes"
line="$("$exe" route-change --iterations "$route_iterations" | grep '^RESULT')" || die "route-change failed"
field() { echo "$line" | sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
rc_p50="$(field p50_ms)"; rc_p99="$(field p99_ms)"; rc_max="$(field max_ms)"
rc_commit="$(field commit_p50_ms)"; rc_stale="$(field stale)"

# ---- connection flood ----
log "connection flood: $flood_seconds s per phase"
flood_out="$("$exe" flood --wrk "$(command -v wrk)" --seconds "$flood_seconds")" || die "flood failed"
flood_table="$(echo "$flood_out" | grep '^|')"

# ---- report ----
verdict() { # condition (awk expression) -> met/missed
  if awk "BEGIN { exit !($1) }"; then echo met; else echo "**missed**"; fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
fmt() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
int() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }

# awk reads its whole input (no early close, so no SIGPIPE under pipefail).
cpu_model="$( (lscpu 2>/dev/null || true) | awk -F': *' '/^Model name/ && !seen { print $2; seen = 1 }')"
wrk_version="$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')"
nginx_version="$( (nginx -v 2>&1 || true) | sed 's/.*nginx\///')"
haproxy_version="$( (haproxy -v 2>&1 || true) | awk 'NR == 1 { print $3 }')"
mode="full"; [ "$short" = 1 ] && mode="short"

v_tput="$(verdict "${rps[router]} >= ${rps[nginx]}")"
v_p99="$(verdict "${p99[router]} <= ${p99[nginx]}")"
v_direct="$(verdict "${rps[router]} >= 0.7 * ${rps[direct]}")"
v_tcp1="$(verdict "${tcp[router,1]} >= ${tcp[haproxy,1]}")"
v_tcp4="$(verdict "${tcp[router,4]} >= ${tcp[haproxy,4]}")"
v_route="$(verdict "$rc_p99 <= 100")"
missed=0
case "$v_tput $v_p99 $v_direct $v_tcp1 $v_tcp4 $v_route" in *missed*) missed=1 ;; esac

cat <<EOF

### Router benchmark ($mode mode, $(date -u +%Y-%m-%d))

Machine: $(nproc) vCPU ($cpu_model), $(uname -sr); wrk $wrk_version, nginx $nginx_version, haproxy $haproxy_version;
load average $load_before before the run, $(cut -d ' ' -f 1-3 /proc/loadavg) after.
HTTP: \`wrk -t$wrk_threads -c$wrk_connections -d$wrk_duration --latency\` after a $warmup warm-up, same request
(\`X-Workload-Id\` + \`Authorization\`) for every configuration; median of $rounds round(s).
Server CPU per request: CPU time of the serving process during the wrk run over the requests
it served (for the proxies, without the backend's share).
TCP: ${tcp_seconds} s one-way transfers to the same sink, median of $rounds round(s).

| HTTP | req/s | p50 | p99 | server CPU per request |
|---|---:|---:|---:|---:|
| direct to the backend | $(int "${rps[direct]}") | $(fmt "${p50[direct]}") ms | $(fmt "${p99[direct]}") ms | ${cpu[direct]} µs (backend) |
| nginx $nginx_version (keep-alive upstream) | $(int "${rps[nginx]}") | $(fmt "${p50[nginx]}") ms | $(fmt "${p99[nginx]}") ms | ${cpu[nginx]} µs (nginx workers) |
| router | $(int "${rps[router]}") | $(fmt "${p50[router]}") ms | $(fmt "${p99[router]}") ms | ${cpu[router]} µs (router process) |

| TCP bulk | 1 stream | 4 streams |
|---|---:|---:|
| direct to the sink | $(int "${tcp[direct,1]}") MB/s | $(int "${tcp[direct,4]}") MB/s |
| haproxy $haproxy_version (mode tcp) | $(int "${tcp[haproxy,1]}") MB/s | $(int "${tcp[haproxy,4]}") MB/s |
| router | $(int "${tcp[router,1]}") MB/s | $(int "${tcp[router,4]}") MB/s |

Route change ($route_iterations changes): store update to the first answer of the new backend
p50 $(fmt "$rc_p50") ms, p99 $(fmt "$rc_p99") ms, max $(fmt "$rc_max") ms (store commit p50 $(fmt "$rc_commit") ms; $rc_stale answers from the old backend after the update returned).

Connection flood ($flood_seconds s per phase): \`wrk -t1 -c16 --latency\` on one workload while another
process opens, uses and closes connections to another workload's TCP port; store writes
(a workload update every 20 ms) meanwhile.

$flood_table

| target | measured | |
|---|---|---|
| HTTP throughput ≥ 1.0 × nginx | $(ratio "${rps[router]}" "${rps[nginx]}") × nginx | $v_tput |
| HTTP p99 ≤ nginx | $(fmt "${p99[router]}") ms vs $(fmt "${p99[nginx]}") ms | $v_p99 |
| HTTP throughput ≥ 0.7 × direct | $(ratio "${rps[router]}" "${rps[direct]}") × direct | $v_direct |
| TCP ≥ 1.0 × haproxy, 1 stream | $(ratio "${tcp[router,1]}" "${tcp[haproxy,1]}") × haproxy | $v_tcp1 |
| TCP ≥ 1.0 × haproxy, 4 streams | $(ratio "${tcp[router,4]}" "${tcp[haproxy,4]}") × haproxy | $v_tcp4 |
| route change ≤ 100 ms (p99) | p99 $(fmt "$rc_p99") ms, max $(fmt "$rc_max") ms | $v_route |
EOF

if [ "$strict" = 1 ] && [ "$missed" = 1 ]; then
  log "a target was missed (--strict)"
  exit 1
fi
