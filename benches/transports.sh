#!/usr/bin/env bash
# io_uring vs epoll, side by side on this machine: the same in-memory daemon started with
# --io uring and with --io epoll, driven by the load generator at 1, 16 and 256 concurrent
# streams (1x1, 1x16 and 4x64 connections x streams). Prints one table of medians over --runs.
#   benches/transports.sh [--scenario heartbeat] [--duration 5s] [--runs 3]
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=heartbeat duration=5s runs=3
while [ $# -gt 0 ]; do
    case "$1" in
        --scenario) scenario=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

cargo build --quiet --release --bin agentkeeper -p agentkeeper --bin agentkeeper-bench -p agentkeeper-bench 2>/dev/null \
    || cargo build --quiet --release -p agentkeeper -p agentkeeper-bench
daemon=target/release/agentkeeper
bench=target/release/agentkeeper-bench
port=7370

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-8s %-9s %10s %9s %9s\n' io streams ops/s p50_us p99_us
for io in uring epoll; do
    for shape in "1 1" "1 16" "4 64"; do
        set -- $shape
        ops=() p50=() p99=()
        for _ in $(seq "$runs"); do
            "$daemon" --io "$io" --addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$((port + 1))" --log-level warn \
                --search-model off &
            pid=$!
            sleep 0.5
            json=$("$bench" --target "127.0.0.1:$port" --scenario "$scenario" --connections "$1" \
                --concurrency "$2" --duration "$duration" --warmup 1s --agents 1000 --json)
            kill "$pid"; wait "$pid" 2>/dev/null || true
            ops+=("$(echo "$json" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["ops_per_second"]))')")
            p50+=("$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_us"]["p50"])')")
            p99+=("$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_us"]["p99"])')")
        done
        printf '%-8s %-9s %10s %9s %9s\n' "$io" "$(( $1 * $2 ))" \
            "$(printf '%s\n' "${ops[@]}" | median)" "$(printf '%s\n' "${p50[@]}" | median)" \
            "$(printf '%s\n' "${p99[@]}" | median)"
    done
done
