#!/bin/sh
# Runs inside a booted systemd container (test_packages.py starts it with systemd-nspawn):
# installs the .deb from /dist as an operator would and writes what systemd says to /out, one
# `name: value` or command output per step, for the test to check. Never fails early: every
# step runs and reports, so one broken step shows with the others.
out=/out/trial.log
exec >"$out" 2>&1

# Polls a condition (a shell command) up to 20 s.
wait_for() {
    i=0
    while [ $i -lt 100 ]; do
        if sh -c "$1"; then return 0; fi
        sleep 0.2
        i=$((i + 1))
    done
    echo "timed out: $1"
}

step() { echo "== $*"; }

step install
DEBIAN_FRONTEND=noninteractive dpkg -i /dist/agentkeeper_*.deb
wait_for 'systemctl is-active -q agentkeeper'
systemctl show -p Type,ActiveState,StatusText,DynamicUser,WatchdogUSec,UnitFileState agentkeeper
agentkeeper probe

step watchdog
# A daemon that stops answering (SIGSTOP) under a 2 s watchdog is killed and restarted.
mkdir -p /etc/systemd/system/agentkeeper.service.d
printf '[Service]\nWatchdogSec=2s\n' >/etc/systemd/system/agentkeeper.service.d/watchdog.conf
systemctl daemon-reload
systemctl restart agentkeeper
wait_for 'systemctl is-active -q agentkeeper'
kill -STOP "$(systemctl show -p MainPID --value agentkeeper)"
wait_for '[ "$(systemctl show -p NRestarts --value agentkeeper)" = 1 ] && systemctl is-active -q agentkeeper'
systemctl show -p NRestarts,ActiveState,StatusText agentkeeper
journalctl -u agentkeeper --no-pager -o cat | grep -E "^agentkeeper.service: (Watchdog timeout|Failed with result)"

step bad-config
# A key the daemon does not know: exit 2, no restart, the reason in the journal.
printf 'data-dir = "/var/lib/agentkeeper"\nmetric-addr = ":9090"\n' >/etc/agentkeeper/agentkeeper.toml
systemctl restart agentkeeper
wait_for 'systemctl is-failed -q agentkeeper'
systemctl show -p ActiveState,ExecMainStatus,NRestarts agentkeeper
journalctl -u agentkeeper --no-pager -o cat | grep "unknown key"

step purge
DEBIAN_FRONTEND=noninteractive dpkg --purge agentkeeper
systemctl show -p LoadState agentkeeper
[ -d /var/lib/private/agentkeeper ] && echo "state kept"

step done
systemctl poweroff
