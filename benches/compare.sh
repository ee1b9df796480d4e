#!/usr/bin/env bash
# AgentKeeper, etcd and Redis side by side on this machine, measured by one tool: the load
# generator (built with --features peers) drives each system through the same closed loop and
# the same HDR histograms, at the same connections x streams. Starts ours in memory and with
# --data-dir, redis without persistence and etcd with its default fsync on free local ports, one
# system at a time, and stops everything it started on exit. Installs etcd-server, redis-server,
# protobuf-compiler and libprotobuf-dev (etcd-client's build) and fonts-dejavu-core (the chart)
# with apt-get when missing, and nghttp2-client and curl (the h2load rows). Writes the runs to
# <out>/compare.json, prints one table of ratios and the goals, draws <out>/compare.png.
#   benches/compare.sh [--duration 5s] [--warmup 1s] [--runs 1] [--shapes "1x1 4x64"]
#                      [--out benches/results] [--data-root target/compare] [--daemon PATH]
#                      [--suite single|cluster|hot] [--kills 20] [--nice 0]
# A shape is CONNECTIONSxSTREAMS_PER_CONNECTION; 1x1 is the sequential single-client latency.
# --runs N repeats the whole sequence N times, the systems interleaved (ours, redis, etcd, ours,
# ...), and the table and chart show each row's median run by ops/s.
# --daemon measures an agentkeeper binary built elsewhere (e.g. from a clean checkout) instead of
# building this tree's. --data-root holds the data directories: keep it on a real disk, not tmpfs.
# --suite cluster measures 3-node clusters instead (benches/compare_cluster.sh): writes and lease
# cycles on one durable node, a 3-node AgentKeeper (to its leader and to a follower) and a 3-node
# etcd, then --kills leader kills of each cluster; writes <out>/cluster.json.
# --suite hot runs only the rows of the hot path (issue 24): the h2load rows, the heartbeat rows
# (unary, the KeepAlive stream, etcd's LeaseKeepAlive) and the transport rows, with their goals.
# --nice N runs every system under test and the load generator at that niceness (e.g. -10, as
# root): on a machine shared with compile jobs they then get the CPU when they wake, and the
# others take what is left. The same for every system; the report still shows what others took.
# Rows besides the peers': unary Heartbeat against the KeepAlive stream (one heartbeat per
# message, and 100), and heartbeats 1x1 over TCP against the daemon's --uds socket (sent by the
# tonic client, and by the h2 client), with the kernel's own round trip beside them (socket-floor:
# two threads ping-pong 100 bytes, blocking and polling, printed in the log). The hot suite also
# prints h2-floor: what a server that does nothing (the h2 crate alone, and hyper over it)
# answers under the same h2load at 4x64, the ceiling of the h2load rows on this machine.
# The h2load rows: nghttp2's h2load (C, one thread) instead of the tonic client sends unary
# Heartbeat and GetAgent to ours and Put and Range to etcd, at the same shapes, so the client's
# cost stops hiding the servers'. Each repeats one framed body (the load generator writes it
# from the protobuf message and decodes it back), checks one call's grpc-status with curl, and
# checks the server's own counters (ours: agentkeeper_rpc_total / _errors_total; etcd:
# grpc_server_handled_total by code) against h2load's 2xx count: h2load sees HTTP status only.
# The h2 rows do for the keep-alive streams what h2load does for unary calls: the load generator's
# `--client h2` holds each stream over the h2 crate directly (one thread, no tonic), sends one
# heartbeat per message to ours and one LeaseKeepAlive to etcd, and decodes every answer.
# Every run also records the servers' CPU per operation (/proc/PID/stat of every node), the load
# generator's, the CPU others took on the machine and the load average (the report's "host").
set -euo pipefail
cd "$(dirname "$0")/.."

duration=5s warmup=1s runs=1 shapes="1x1 4x64" out=benches/results data_root=target/compare daemon=
suite=single kills=20 nice=0
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --shapes) shapes=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --data-root) data_root=$2; shift 2 ;;
        --daemon) daemon=$2; shift 2 ;;
        --suite) suite=$2; shift 2 ;;
        --kills) kills=$2; shift 2 ;;
        --nice) nice=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$suite" in
    single | cluster | hot) ;;
    *) echo "--suite is single, cluster or hot, not $suite" >&2; exit 2 ;;
esac
font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
# Every process under test, and the load generator, starts through this (nice execs the
# command: $! is the process itself).
niced=(nice -n "$nice")

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
[ "$suite" != single ] || command -v redis-server >/dev/null || missing+=(redis-server)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v curl >/dev/null || missing+=(curl)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# etcd-client's protos import the well-known types, which protoc finds only with these headers.
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
[ -f "$font" ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -z "$daemon" ]; then
    cargo build --quiet --release -p agentkeeper --bin agentkeeper
    daemon=target/release/agentkeeper
fi
cargo build --quiet --release -p agentkeeper-bench --features peers
bench=target/release/agentkeeper-bench
report=target/release/compare-report
probe=target/release/cluster-probe
cluster_report=target/release/cluster-report

mkdir -p "$out" "$data_root"
work=$(mktemp -d "$data_root/run.XXXXXX")
work=$(cd "$work" && pwd)
pids=()
stop_all() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Waits until $1 (a command) succeeds, for 20 s at most.
wait_until() {
    for _ in $(seq 200); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "gave up waiting for: $*" >&2
    return 1
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
etcd_healthy() {
    python3 -c 'import json, sys, urllib.request as u; sys.exit(json.load(u.urlopen(sys.argv[1], timeout=1))["health"] != "true")' \
        "http://127.0.0.1:$1/health"
}

# Each start_* sets where the next runs go: $port, the servers' pids ($cpu_pids) and their
# /metrics addresses ($scrape), comma-separated.
start_ours() { # name [daemon flags...]
    local name=$1 metrics; shift
    port=$(free_port)
    metrics=$(free_port)
    # --search-model off: the load generator registers 1,000 agents of distinct cards in
    # set-up, which the sentence encoder would encode (~30 ms of a core each) during the
    # measured seconds; the peers have nothing like it. Find has its own benchmark
    # (benches/search_daemon.sh).
    "${niced[@]}" "$daemon" --addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$metrics" --log-level warn \
        --search-model off "$@" \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
    cpu_pids=$! scrape="127.0.0.1:$metrics"
    wait_until listening "$port"
}
start_redis() {
    port=$(free_port)
    mkdir -p "$work/redis.$round"
    "${niced[@]}" redis-server --port "$port" --bind 127.0.0.1 --protected-mode no --save '' --appendonly no \
        --dir "$work/redis.$round" >"$work/redis.log" 2>&1 &
    pids+=($!)
    cpu_pids=$! scrape=
    wait_until listening "$port"
}
start_etcd() {
    port=$(free_port)
    local peer
    peer=$(free_port)
    "${niced[@]}" etcd --name bench --data-dir "$work/etcd.$round" --logger zap --log-level warn \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
    pids+=($!)
    cpu_pids=$! scrape="127.0.0.1:$port"
    wait_until etcd_healthy "$port"
}

lines="$work/results.jsonl"
: >"$lines"
# run ITEM SYSTEM ROLE KIND SCENARIO: every shape against the system listening on $port
# ($client=h2load: sent by h2load; $client=h2: by the load generator's h2 stream client; $batch:
# heartbeats per keep-alive message; $target: another address than 127.0.0.1:$port).
run() {
    local item=$1 system=$2 role=$3 kind=$4 scenario=$5 shape json
    for shape in $shapes; do
        if ! json=$("${niced[@]}" "$bench" --target-kind "$kind" --target "${target:-127.0.0.1:$port}" --scenario "$scenario" \
            --batch "${batch:-1}" --client "${client:-tonic}" \
            --connections "${shape%x*}" --concurrency "${shape#*x}" --duration "$duration" \
            --warmup "$warmup" --agents 1000 --policies 10000 --cpu-pids "$cpu_pids" \
            ${scrape:+--scrape "$scrape"} --json); then
            echo "  $item / $system / $shape: the load generator failed; row left out" >&2
            continue
        fi
        printf '{"item":"%s","system":"%s","role":"%s","round":%s,"report":%s}\n' \
            "$item" "$system" "$role" "$round" "$json" >>"$lines"
        echo "  $item / $system / $shape: $(echo "$json" | python3 -c \
            'import json, sys; r = json.load(sys.stdin); l = r["latency_us"]
h = r["host"]; cpu = h["server_cpu_us_per_op"]
print("%.0f ops/s, p50 %d µs, p99 %d µs, %d errors%s, server CPU %s µs/op, others %.2f cores busy, load %s"
      % (r["ops_per_second"], l["p50"], l["p99"], r["errors"],
         " (first: %s)" % r["first_error"] if r["first_error"] else "", "?" if cpu is None else "%.1f" % cpu,
         h["other_busy_cores"] or 0, h["load_average_end"] and h["load_average_end"][0]))')" >&2
    done
}

if [ "$suite" = cluster ]; then
    # shellcheck source=benches/compare_cluster.sh
    source benches/compare_cluster.sh
    exit 0
fi

redis_version=$( (redis-server --version 2>/dev/null || true) | sed -n 's/.*v=\([0-9.]*\).*/\1/p')
etcd_version=$(etcd --version | sed -n 's/^etcd Version: //p')
echo "machine: $(nproc) cores, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg);" \
    "shapes $shapes, $duration each after $warmup warm-up, $runs run(s)" >&2

for round in $(seq "$runs"); do
    echo "agentkeeper, in memory (run $round)" >&2
    start_ours memory
    if [ "$suite" = single ]; then
        run acquire-release agentkeeper ours agentkeeper acquire-release
    fi
    run heartbeat agentkeeper ours agentkeeper heartbeat
    if [ "$suite" = single ]; then
        run read agentkeeper ours agentkeeper get-agent
        run read "agentkeeper CheckPolicy" ours agentkeeper check-policy
        run write agentkeeper ours agentkeeper set-policy
    fi
    # The keep-alive stream: one heartbeat per message (against unary Heartbeat above and etcd's
    # LeaseKeepAlive below), and 100 per message as an SDK batches a tick's agents.
    run heartbeat "agentkeeper KeepAlive stream" ours agentkeeper stream-heartbeat
    batch=100 run "heartbeat, 100 per message" "agentkeeper KeepAlive stream" ours agentkeeper stream-heartbeat
    # Lease renewals: unary RenewLease against the LeaseService.KeepAlive stream (one renewal per
    # message), and etcd's LeaseKeepAlive, the same work (its heartbeat rows, copied below).
    run "lease renewal" agentkeeper ours agentkeeper renew
    run "lease renewal" "agentkeeper LeaseService.KeepAlive stream" ours agentkeeper stream-renew
    # Unary calls sent by h2load: Heartbeat against etcd's Put, GetAgent against its Range.
    client=h2load run "h2load, Heartbeat vs Put" agentkeeper ours agentkeeper heartbeat
    client=h2load run "h2load, GetAgent vs Range" agentkeeper ours agentkeeper get-agent
    # The keep-alive stream sent by the load generator's h2 client (one thread, no tonic), as
    # h2load sends the unary calls: one heartbeat per message, against etcd's LeaseKeepAlive.
    client=h2 run "h2 client, KeepAlive vs LeaseKeepAlive" "agentkeeper KeepAlive stream" ours agentkeeper stream-heartbeat
    stop_all
    if [ "$suite" = hot ]; then
        # What a server that does nothing answers under the same h2load at 4x64 (the h2 crate
        # alone, and hyper over it): the ceiling of the h2load rows above (in the log).
        "${niced[@]}" target/release/h2-floor --rounds 1 --duration "$duration" | sed 's/^/  h2 floor, /' >&2
    fi

    echo "agentkeeper, in memory, TCP and its Unix socket (run $round)" >&2
    start_ours uds --uds "$work/agentkeeper.sock"
    shapes=1x1 run "transport, 1x1" "agentkeeper TCP" ours agentkeeper heartbeat
    shapes=1x1 target="unix:$work/agentkeeper.sock" run "transport, 1x1" "agentkeeper unix socket" ours agentkeeper heartbeat
    # The same sent by the h2 client (one thread, no tonic), whose own time per call is smaller
    # than the tonic client's, so that the transport's share of the round trip shows.
    client=h2 shapes=1x1 run "transport, 1x1, h2 client" "agentkeeper TCP" ours agentkeeper heartbeat
    client=h2 shapes=1x1 target="unix:$work/agentkeeper.sock" run "transport, 1x1, h2 client" "agentkeeper unix socket" ours agentkeeper heartbeat
    stop_all
    # What the kernel alone gives the same round trip (no daemon): the floor of the rows above.
    "${niced[@]}" target/release/socket-floor --rounds 1 --round-trips 50000 | sed 's/^/  socket floor, /' >&2
    "${niced[@]}" target/release/socket-floor --rounds 1 --round-trips 50000 --spin | sed 's/^/  socket floor, /' >&2

    if [ "$suite" = single ]; then
        echo "redis $redis_version, no persistence (run $round)" >&2
        start_redis
        run acquire-release "redis $redis_version" peer redis acquire-release
        run read "redis $redis_version" peer redis get-agent
        run write "redis $redis_version" peer redis set-policy
        stop_all

        echo "agentkeeper --data-dir (run $round)" >&2
        start_ours "durable.$round" --data-dir "$work/agentkeeper.$round"
        run "durable write" "agentkeeper --data-dir" ours agentkeeper set-policy
        run "acquire-release, durable" "agentkeeper --data-dir" ours agentkeeper acquire-release
        stop_all
    fi

    echo "etcd $etcd_version (run $round)" >&2
    start_etcd
    if [ "$suite" = single ]; then
        run acquire-release "etcd $etcd_version" peer etcd acquire-release
    fi
    run heartbeat "etcd $etcd_version" peer etcd heartbeat
    if [ "$suite" = single ]; then
        run read "etcd $etcd_version" peer etcd get-agent
        run "durable write" "etcd $etcd_version" peer etcd set-policy
    fi
    client=h2load run "h2load, Heartbeat vs Put" "etcd $etcd_version" peer etcd set-policy
    client=h2load run "h2load, GetAgent vs Range" "etcd $etcd_version" peer etcd get-agent
    client=h2 run "h2 client, KeepAlive vs LeaseKeepAlive" "etcd $etcd_version" peer etcd heartbeat
    stop_all
done
# etcd's LeaseKeepAlive is a lease renewal as much as a heartbeat: its heartbeat rows stand in
# the lease renewal rows too (copies of the same runs). etcd's writes are always durable: its
# acquire-release and Put rows are compared with ours in memory (above) and with ours on disk
# (these copies of the same runs).
grep "\"system\":\"etcd $etcd_version\"" "$lines" | grep '"item":"heartbeat"' \
    | sed 's/"item":"heartbeat"/"item":"lease renewal"/' >>"$lines" || true
if [ "$suite" = single ]; then
    grep "\"system\":\"etcd $etcd_version\"" "$lines" | grep '"item":"acquire-release"' \
        | sed 's/"item":"acquire-release"/"item":"acquire-release, durable"/' >>"$lines" || true
    grep "\"system\":\"etcd $etcd_version\"" "$lines" | grep '"item":"durable write"' \
        | sed 's/"item":"durable write"/"item":"write"/' >>"$lines" || true
fi

{ echo '['; sed '$!s/$/,/' "$lines"; echo ']'; } >"$out/compare.json"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo
"$report" --results "$out/compare.json" --png "$out/compare.png" --font "$font"
echo
echo "results: $out/compare.json, chart: $out/compare.png"
