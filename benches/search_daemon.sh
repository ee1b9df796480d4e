#!/usr/bin/env bash
# Daemon-level search benchmarks (issue 20), through gRPC with the load generator:
#   - Find p50/p99 with the sentence encoder (hybrid ranking: the query encoded on an embedding
#     worker, then BM25F fused with the cosine over every card vector) at 1k, 10k and 100k agents
#     (64 distinct cards, so the fleet's vectors are in within seconds; the wait for them is not
#     measured), one Find at a time; and at 100k without the encoder, for the encoder's share;
#   - the registration rate of 100,000 agents with 10 distinct cards, with the encoder and
#     against the lexical-only daemon (--search-model off).
# ROWS=register runs only the registration rows.
# One in-memory daemon per run (release build), on port 0. Prints one line per run; the JSON
# reports go to $OUT (default target/search-daemon). BIN=PATH runs another daemon binary (an A/B
# against a build of another commit; nothing is built then). Usage: benches/search_daemon.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-10}"
OUT="${OUT:-target/search-daemon}"
mkdir -p "$OUT"
make models >/dev/null
if [ -z "${BIN:-}" ]; then
    cargo build --release -p agentkeeper -p agentkeeper-bench --bins
    BIN=target/release/agentkeeper
fi
BENCH="${BENCH:-target/release/agentkeeper-bench}"
[ -x "$BENCH" ] || cargo build --release -p agentkeeper-bench --bins

PID=""
stop_daemon() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=""
    fi
}
trap stop_daemon EXIT

# start_daemon ARGS...: starts the daemon, sets GRPC and HTTP from its ready file.
start_daemon() {
    rm -f "$OUT/ready.json"
    "$BIN" --addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --ready-file "$OUT/ready.json" "$@" \
        2>"$OUT/daemon.log" &
    PID=$!
    for _ in $(seq 1 600); do
        [ -s "$OUT/ready.json" ] && break
        sleep 0.1
    done
    GRPC=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["grpc"])' "$OUT/ready.json")
    HTTP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$OUT/ready.json")
}

# summary NAME: one line from the JSON report $OUT/NAME.json.
summary() {
    python3 - "$OUT/$1.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"]
print(f'{sys.argv[2]}: {r["operations"]} ops, {r["errors"]} errors, {r["ops_per_second"]:.0f}/s, '
      f'p50 {l["p50"]} us, p90 {l["p90"]} us, p99 {l["p99"]} us, max {l["max"]} us, '
      f'server CPU {r["host"]["server_cpu_us_per_op"] or 0:.0f} us/op, other busy cores '
      f'{r["host"]["other_busy_cores"] or 0:.2f}, load average {r["host"]["load_average_start"]} -> '
      f'{r["host"]["load_average_end"]}')
PY
}

# ROWS=register runs only the registration rows.
rows=${ROWS:-find,register}
for agents in 1000 10000 100000; do
    [[ $rows == *find* ]] || break
    start_daemon --search-model models
    "$BENCH" --target "$GRPC" --scenario find --agents "$agents" --distinct-cards 64 \
        --wait-vectors "$HTTP" --connections 1 --concurrency 1 --warmup 2s \
        --duration "${SECONDS_PER_RUN}s" --cpu-pids "$PID" --json >"$OUT/find-hybrid-$agents.json"
    summary "find-hybrid-$agents"
    stop_daemon
done

if [[ $rows == *find* ]]; then
    start_daemon --search-model off
    "$BENCH" --target "$GRPC" --scenario find --agents 100000 --distinct-cards 64 \
        --connections 1 --concurrency 1 --warmup 2s --duration "${SECONDS_PER_RUN}s" \
        --cpu-pids "$PID" --json >"$OUT/find-lexical-100000.json"
    summary find-lexical-100000
    stop_daemon
fi

# The same 100,000 registrations with the encoder and without: Register answers before the
# card's vector exists, and once a text's vector is cached a replica's Register carries it (one
# core command), so the two rates should match (the 10 texts are encoded once each).
for model in models off; do
    name=$([ "$model" = off ] && echo lexical || echo encoder)
    start_daemon --search-model "$model"
    "$BENCH" --target "$GRPC" --scenario register --agents 1 --distinct-cards 10 --requests 100000 \
        --connections 4 --concurrency 16 --warmup 0s --cpu-pids "$PID" --json \
        >"$OUT/register-$name-100000.json"
    summary "register-$name-100000"
    stop_daemon
done
