# The cluster suite of benches/compare.sh (`--suite cluster`), sourced by it after its set-up:
# it uses compare.sh's flags, binaries ($daemon, $bench, $probe, $report), $work, $pids, stop_all,
# free_port, wait_until, listening, etcd_healthy and run. Not meant to run on its own.
#
# Per round (--runs, the systems interleaved): one durable node (--data-dir), a 3-node
# AgentKeeper cluster driven through its leader and then through a follower (which forwards
# writes to the leader), and a 3-node etcd driven the same two ways; each with SetPolicy / Put
# (sent by the load generator, then by h2load) and the lease cycle at every shape. Each system
# is stopped before the next starts. Then failover: both clusters up side by side, the leader of
# each killed in turn (kill -9) --kills times, the killed node restarted and caught up before
# the next kill. Writes <out>/cluster.json
# (runs, kills, machine, commit, settings) and prints the tables cluster-report makes of it.
#
# Comparable settings: both clusters with a 100 ms heartbeat and a 1 s election timeout (each
# draws its timeout between 1x and 2x that), pre-vote on, fsync before acknowledging, every
# node on this machine's one disk; etcd as Debian ships it (the daemon's defaults otherwise).

etcd_version=$(etcd --version | sed -n 's/^etcd Version: //p')
cluster_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "machine: $(nproc) cores, $(uname -sr), load average $cluster_load_before;" \
    "shapes $shapes, $duration each after $warmup warm-up, $runs run(s), $kills kill(s) per cluster," \
    "niceness $nice" >&2

declare -a ak_port ak_peer ak_metrics ak_pid etcd_port etcd_peer etcd_pid
ak_members= ak_endpoints= ak_dir= etcd_members= etcd_endpoints= etcd_dir= etcd_token=

# Node N of the AgentKeeper cluster, (re)started with its data dir; appends to its log.
start_ak_node() {
    # --search-model off, as compare.sh's start_ours says why.
    "${niced[@]}" "$daemon" --node-id "$1" --addr "127.0.0.1:${ak_port[$1]}" --metrics-addr "127.0.0.1:${ak_metrics[$1]}" \
        --search-model off \
        --peer-addr "127.0.0.1:${ak_peer[$1]}" --initial-cluster "$ak_members" --data-dir "$ak_dir/node-$1" \
        --heartbeat-interval 100ms --election-timeout 1s --log-level warn >>"$work/ak-$1.log" 2>&1 &
    ak_pid[$1]=$!
    pids+=($!)
}

# Three AgentKeeper nodes on free local ports, data dirs under $work/$1; returns once they agree
# on a leader.
start_ak_cluster() {
    local n
    ak_dir="$work/$1" ak_members= ak_endpoints=
    for n in 1 2 3; do
        ak_port[n]=$(free_port) ak_peer[n]=$(free_port) ak_metrics[n]=$(free_port)
        ak_members+="${ak_members:+,}$n=127.0.0.1:${ak_peer[n]}"
        ak_endpoints+="${ak_endpoints:+,}127.0.0.1:${ak_port[n]}"
    done
    for n in 1 2 3; do start_ak_node "$n"; done
    for n in 1 2 3; do wait_until listening "${ak_port[n]}"; done
    "$probe" leader --kind agentkeeper --endpoints "$ak_endpoints" >/dev/null
    cpu_pids="${ak_pid[1]},${ak_pid[2]},${ak_pid[3]}"
    scrape="127.0.0.1:${ak_metrics[1]},127.0.0.1:${ak_metrics[2]},127.0.0.1:${ak_metrics[3]}"
}

start_etcd_node() {
    "${niced[@]}" etcd --name "e$1" --data-dir "$etcd_dir/e$1" --logger zap --log-level warn \
        --heartbeat-interval 100 --election-timeout 1000 --pre-vote \
        --listen-client-urls "http://127.0.0.1:${etcd_port[$1]}" \
        --advertise-client-urls "http://127.0.0.1:${etcd_port[$1]}" \
        --listen-peer-urls "http://127.0.0.1:${etcd_peer[$1]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${etcd_peer[$1]}" \
        --initial-cluster "$etcd_members" --initial-cluster-token "$etcd_token" \
        --initial-cluster-state new >>"$work/etcd-$1.log" 2>&1 &
    etcd_pid[$1]=$!
    pids+=($!)
}

start_etcd_cluster() {
    local n
    etcd_dir="$work/$1" etcd_members= etcd_endpoints= etcd_token="bench-$1-$$"
    for n in 1 2 3; do
        etcd_port[n]=$(free_port) etcd_peer[n]=$(free_port)
        etcd_members+="${etcd_members:+,}e$n=http://127.0.0.1:${etcd_peer[n]}"
        etcd_endpoints+="${etcd_endpoints:+,}127.0.0.1:${etcd_port[n]}"
    done
    for n in 1 2 3; do start_etcd_node "$n"; done
    for n in 1 2 3; do wait_until etcd_healthy "${etcd_port[n]}"; done
    "$probe" leader --kind etcd --endpoints "$etcd_endpoints" >/dev/null
    cpu_pids="${etcd_pid[1]},${etcd_pid[2]},${etcd_pid[3]}"
    scrape="127.0.0.1:${etcd_port[1]},127.0.0.1:${etcd_port[2]},127.0.0.1:${etcd_port[3]}"
}

# Points the next runs at the leader ($1 = leader) or a follower ($1 = follower) of the cluster
# whose endpoints are $2 (kind $3): sets $port.
aim() {
    local leader ports
    leader=$("$probe" leader --kind "$3" --endpoints "$2")
    IFS=, read -r -a ports <<<"$2"
    if [ "$1" = leader ]; then
        port=${ports[leader - 1]##*:}
    else
        port=${ports[leader % 3]##*:}
    fi
}

cluster_rows() { # system-name kind
    run write "$1" "$3" "$2" set-policy
    # The same writes sent by h2load (C, one thread), so the client's own CPU, which shares the
    # two cores with the servers, weighs less in the ratio: one policy / one key each call.
    client=h2load run "write, h2load" "$1" "$3" "$2" set-policy
    run "acquire-release" "$1" "$3" "$2" acquire-release
}

for round in $(seq "$runs"); do
    echo "agentkeeper, 1 node, --data-dir (run $round)" >&2
    start_ours "single.$round" --data-dir "$work/single.$round"
    cluster_rows "agentkeeper, 1 node" agentkeeper ours
    stop_all
    rm -rf "$work/single.$round"

    echo "agentkeeper, 3 nodes (run $round)" >&2
    start_ak_cluster "ak.$round"
    aim leader "$ak_endpoints" agentkeeper
    cluster_rows "agentkeeper, 3 nodes, to the leader" agentkeeper ours
    aim follower "$ak_endpoints" agentkeeper
    cluster_rows "agentkeeper, 3 nodes, to a follower" agentkeeper ours
    stop_all
    rm -rf "$ak_dir"

    echo "etcd $etcd_version, 3 nodes (run $round)" >&2
    start_etcd_cluster "etcd.$round"
    aim leader "$etcd_endpoints" etcd
    cluster_rows "etcd $etcd_version, 3 nodes, to the leader" etcd peer
    aim follower "$etcd_endpoints" etcd
    cluster_rows "etcd $etcd_version, 3 nodes, to a follower" etcd peer
    stop_all
    # etcd preallocates 64 MB of WAL per node: a round's dirs go before the next round.
    rm -rf "$etcd_dir"
done

# One leader kill of the cluster of kind $1: prints the probe's JSON line with the kill's number,
# restarts the killed node and waits until it caught up.
kill_leader() { # kind number
    # (Not "pids": a local of that name would hide, from start_*_node, the list stop_all stops.)
    local endpoints node_pids json killed
    if [ "$1" = agentkeeper ]; then
        endpoints=$ak_endpoints node_pids="${ak_pid[1]},${ak_pid[2]},${ak_pid[3]}"
    else
        endpoints=$etcd_endpoints node_pids="${etcd_pid[1]},${etcd_pid[2]},${etcd_pid[3]}"
    fi
    if ! json=$("${niced[@]}" "$probe" failover --kind "$1" --endpoints "$endpoints" --pids "$node_pids"); then
        echo "  $1 kill $2: the probe failed; left out" >&2
        return 1
    fi
    killed=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["killed"])' "$json")
    if [ "$1" = agentkeeper ]; then
        wait "${ak_pid[killed]}" 2>/dev/null || true
        start_ak_node "$killed"
        wait_until listening "${ak_port[killed]}"
    else
        wait "${etcd_pid[killed]}" 2>/dev/null || true
        start_etcd_node "$killed"
        wait_until etcd_healthy "${etcd_port[killed]}"
    fi
    "$probe" leader --kind "$1" --endpoints "$endpoints" >/dev/null
    printf '{"kill":%s,"system":"%s","report":%s}\n' "$2" "$1" "$json" >>"$kills_lines"
    echo "  $1 kill $2: node $killed; first write acknowledged after $(python3 -c \
        'import json, sys; r = json.loads(sys.argv[1]); f = r["failover_ms"]
print("%s, load %s" % ("never" if f is None else "%.0f ms" % f, r["load_average"]))' \
        "$json")" >&2
}

kills_lines="$work/kills.jsonl"
: >"$kills_lines"
if [ "$kills" -gt 0 ]; then
    echo "failover: $kills leader kills of each cluster, interleaved" >&2
    start_ak_cluster ak.failover
    start_etcd_cluster etcd.failover
    for k in $(seq "$kills"); do
        kill_leader agentkeeper "$k" || true
        kill_leader etcd "$k" || true
    done
    stop_all
fi
cluster_load_after=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average after: $cluster_load_after" >&2

# The results, with what they were measured on.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || commit+="+uncommitted changes"
python3 - "$out/cluster.json" "$lines" "$kills_lines" <<EOF
import json, platform, sys
out, lines, kills = sys.argv[1:4]
def read(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]
def meminfo():
    with open("/proc/meminfo") as f:
        return next(l.split(":")[1].strip() for l in f if l.startswith("MemTotal"))
def cpu_model():
    with open("/proc/cpuinfo") as f:
        return next((l.split(":")[1].strip() for l in f if l.startswith("model name")), "unknown")
result = {
    "commit": "$commit",
    "daemon": "$("$daemon" --version 2>/dev/null | head -1)",
    "etcd": "$etcd_version",
    "machine": {"cores": $(nproc), "cpu": cpu_model(), "memory": meminfo(),
                "kernel": platform.release()},
    "settings": {"duration": "$duration", "warmup": "$warmup", "runs": $runs, "shapes": "$shapes",
                 "kills": $kills, "nice": $nice, "heartbeat_ms": 100, "election_timeout_ms": 1000},
    "load_average_before": "$cluster_load_before",
    "load_average_after": "$cluster_load_after",
    "runs": read(lines),
    "failover": read(kills),
}
with open(out, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
EOF
echo
"$cluster_report" --results "$out/cluster.json"
echo
echo "results: $out/cluster.json"
