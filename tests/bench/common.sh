# Shared helpers of the benchmark scripts (sourced, not run).
set -euo pipefail
[ -n "${BENCH_TRACE:-}" ] && set -x
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="$(mktemp -d /tmp/sluice-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx-up.pid" ] && kill "$(cat "$WORK/nginx-up.pid" 2>/dev/null)" 2>/dev/null || true
  [ -f "$WORK/nginx-proxy.pid" ] && kill "$(cat "$WORK/nginx-proxy.pid" 2>/dev/null)" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Installs Debian packages for the commands that are missing.
need() {
  local missing=()
  for pair in "$@"; do
    local cmd="${pair%%:*}" pkg="${pair##*:}"
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts packaged services; the benchmarks run their own instances.
    pkill -x nginx 2>/dev/null || true
    pkill -x haproxy 2>/dev/null || true
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# Starts nginx serving a tiny 200 on two ports (the upstreams), one worker.
start_upstreams() {
  UP1=$(free_port); UP2=$(free_port)
  cat > "$WORK/nginx-up.conf" <<CONF
worker_processes 1;
pid $WORK/nginx-up.pid;
error_log $WORK/nginx-up.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP1; location / { add_header x-backend stable; return 200 "stable\n"; } }
  server { listen 127.0.0.1:$UP2; location / { add_header x-backend canary; return 200 "canary\n"; } }
}
CONF
  nginx -c "$WORK/nginx-up.conf" -p "$WORK" 2>/dev/null
  wait_port "$UP1"; wait_port "$UP2"
}

# wrk run -> "rps p50_ms p99_ms"
wrk_measure() {
  local url="$1" conns="$2" secs="$3"
  local out
  out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency "$url")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}

to_ms() {
  python3 -c '
import sys
v = sys.argv[1]
for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
    if v.endswith(unit):
        print(round(float(v[:-len(unit)]) * f, 3)); break
else:
    print(v)' "$1"
}

ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}' if b else 'n/a')" "$1" "$2"; }
