"""The packages as a user meets them: the wheel installed into a fresh venv runs embedded mode
with no cargo and no target/ around; the .deb and the release tarball hold what they promise and
their binary serves with the packaged config; the systemd unit verifies, and the .deb installed
into a booted systemd container (this machine's own system under an overlay) starts as a notify
service, is restarted by the watchdog when it hangs, refuses a bad config key without restarts;
the container recipe's settings are ones the daemon accepts.

The wheel is built here with maturin's dev profile (it reuses the debug build); the .deb and the
tarball package the debug binary ($AGENTKEEPER_BIN, else target/debug/agentkeeper), so nothing
is compiled in release mode for the suite. `make wheel`, `make deb` and `make dist` run the same
script on a release build.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "packaging" / "build.sh"
HANG_GUARD = 60.0


def cargo_version() -> str:
    match = re.search(r'^version = "([^"]+)"$', (ROOT / "Cargo.toml").read_text(), re.MULTILINE)
    assert match, "Cargo.toml names its version"
    return match.group(1)


VERSION = cargo_version()


def run(args, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command, failing the test with its output if it fails."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def binary() -> Path:
    path = Path(os.environ.get("AGENTKEEPER_BIN", ROOT / "target" / "debug" / "agentkeeper"))
    assert path.is_file(), f"build the daemon first (cargo build): {path}"
    return path


@pytest.fixture(scope="session")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="session")
def wheel(out) -> Path:
    printed = run([str(BUILD), "wheel", "--dev", str(out / "wheel")]).stdout.split()
    path = Path(printed[-1])
    assert path.name.startswith(f"agentkeeper-{VERSION}-py3-none-") and path.suffix == ".whl", path
    return path


@pytest.fixture(scope="session")
def deb(binary, out) -> Path:
    path = Path(run([str(BUILD), "deb", str(binary), str(out)]).stdout.split()[-1])
    assert path.name == f"agentkeeper_{VERSION}_amd64.deb", path
    return path


@pytest.fixture(scope="session")
def tarball(binary, out) -> Path:
    path = Path(run([str(BUILD), "tarball", str(binary), str(out)]).stdout.split()[-1])
    assert path.name == f"agentkeeper-{VERSION}-x86_64-linux.tar.gz", path
    return path


def wait_until(what: str, check):
    """Polls check() until it returns something truthy; fails naming `what` after HANG_GUARD."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {HANG_GUARD} s")
        time.sleep(0.02)


def serve_and_probe(binary: Path, tmp: Path, *, config: Path | None = None, args: tuple = ()) -> str:
    """Starts `binary` on free ports (with `config` and `args` if given) in `tmp` (so ./models
    of the checkout is not found), waits for its ready file, checks /readyz with its own `probe`
    command, stops it with SIGTERM; returns what it logged."""
    ready = tmp / "ready.json"
    argv = [str(binary), "--addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0", f"--ready-file={ready}", *args]
    if config is not None:
        argv.append(f"--config={config}")
    argv.append(f"--data-dir={tmp / 'data'}")
    log = tmp / "daemon.log"
    with log.open("w") as stderr:
        daemon = subprocess.Popen(argv, stderr=stderr, text=True, cwd=tmp)
        try:
            wait_until("the ready file", lambda: ready.exists() or daemon.poll() is not None)
            assert daemon.poll() is None, log.read_text()
            addrs = json.loads(ready.read_text())
            probed = run([str(binary), "probe", addrs["http"]])
            assert probed.stdout.strip().endswith("200 OK: ready"), probed.stdout
        finally:
            daemon.terminate()
            daemon.wait(timeout=HANG_GUARD)
    assert daemon.returncode == 0, log.read_text()
    return log.read_text()


MODEL_FILES = ("model.safetensors", "tokenizer.json", "config.json", "README.md")
MODEL_LOADED = "search model loaded: Find ranks by BM25F fused with the sentence encoder"


# --- the wheel ---------------------------------------------------------------------------


def test_the_wheel_holds_the_sdk_the_binary_and_the_crates_version(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"agentkeeper-{VERSION}.dist-info/METADATA").decode()
        script = archive.getinfo(f"agentkeeper-{VERSION}.data/scripts/agentkeeper")
    sdk = ROOT / "sdk" / "python"
    expected = {
        path.relative_to(sdk).as_posix()
        for path in (sdk / "agentkeeper").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert expected <= names, f"SDK files missing from the wheel: {sorted(expected - names)}"
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert script.external_attr >> 16 & 0o111, "the binary is executable"
    assert f"\nVersion: {VERSION}\n" in metadata
    # The pure-Python SDK (sdk/python/pyproject.toml) is the same distribution without the
    # binary: same version and the same requirements.
    tomllib = pytest.importorskip("tomllib")
    pure = tomllib.loads((sdk / "pyproject.toml").read_text())["project"]
    carrying = tomllib.loads((ROOT / "packaging" / "python" / "pyproject.toml").read_text())["project"]
    assert pure["version"] == VERSION, "sdk/python's version is the crate's"
    for key in ("name", "description", "license", "requires-python", "dependencies", "classifiers", "keywords"):
        assert carrying[key] == pure[key], key
    for requirement in pure["dependencies"]:
        assert f"Requires-Dist: {requirement}" in metadata, requirement


def test_the_wheel_in_a_fresh_venv_runs_embedded_mode_with_no_cargo_and_no_target_on_path(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)])
    installed = venv / "bin" / "agentkeeper"
    version = run([str(installed), "--version"]).stdout
    assert version.startswith(f"agentkeeper {VERSION} (commit "), version

    # Not activated: PATH is an empty directory (no cargo, no target/, no system agentkeeper),
    # nothing points at a binary, and the working directory is not a checkout.
    nowhere = tmp_path / "empty-path"
    nowhere.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTKEEPER_", "VIRTUAL_ENV"))}
    env["PATH"] = str(nowhere)
    script = """
import json
from agentkeeper import AgentKeeperClient, find_binary
with AgentKeeperClient.embedded() as client:
    with client.register("from-the-wheel", "installed with pip", "1.0.0", tools=["pip"]) as agent:
        found = [a.card.name for a in client.find(tools=["pip"])]
        status = client.get_agent(agent.agent_id).status.name
    print(json.dumps({"binary": find_binary(), "found": found, "status": status}))
"""
    done = run([str(venv / "bin" / "python"), "-c", script], env=env, cwd=work)
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(said["binary"]) == installed.resolve(), "embedded mode found the wheel's binary"
    assert said["found"] == ["from-the-wheel"] and said["status"] == "ALIVE", said

    # Activated (the venv's bin on PATH), `agentkeeper` is the command.
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{nowhere}"
    assert shutil.which("agentkeeper", path=env["PATH"]) == str(installed)
    run(["agentkeeper", "--help"], env=env, cwd=work)


# --- the .deb ----------------------------------------------------------------------------


def man_pages(binary: Path, tmp: Path) -> list[str]:
    """The man pages `binary` writes, one per command (agentkeeper.1, agentkeeper-ctl.1, ...)."""
    pages = tmp / "man-pages"
    pages.mkdir()
    run([str(binary), "man", "--dir", str(pages)])
    names = sorted(page.name for page in pages.iterdir())
    assert "agentkeeper.1" in names and "agentkeeper-ctl.1" in names, names
    return names


def test_the_deb_holds_binary_unit_config_completions_man_pages_and_its_binary_serves(deb, binary, tmp_path):
    info = run(["dpkg-deb", "--field", str(deb), "Package", "Version", "Architecture", "Depends"]).stdout
    assert f"Package: agentkeeper\nVersion: {VERSION}\nArchitecture: amd64\n" in info, info
    assert re.search(r"^Depends: libc6 \(>= 2\.\d+\), libgcc-s1$", info, re.MULTILINE), info
    listing = run(["dpkg-deb", "--contents", str(deb)]).stdout
    files = {line.split()[-1].removeprefix(".") for line in listing.splitlines() if not line.startswith("d")}
    expected = {
        "/usr/bin/agentkeeper",
        "/usr/lib/systemd/system/agentkeeper.service",
        "/etc/agentkeeper/agentkeeper.toml",
        "/usr/share/bash-completion/completions/agentkeeper",
        "/usr/share/zsh/vendor-completions/_agentkeeper",
        "/usr/share/fish/vendor_completions.d/agentkeeper.fish",
        "/usr/share/doc/agentkeeper/copyright",
        "/usr/share/doc/agentkeeper/README.md.gz",
        *(f"/usr/share/agentkeeper/models/all-minilm-l6-v2/{file}" for file in MODEL_FILES),
    } | {f"/usr/share/man/man1/{page}.gz" for page in man_pages(binary, tmp_path)}
    assert files == expected, f"extra: {files - expected}, missing: {expected - files}"
    assert all(" root/root " in line for line in listing.splitlines()), listing
    control = tmp_path / "control"
    run(["dpkg-deb", "--control", str(deb), str(control)])
    assert (control / "conffiles").read_text().split() == ["/etc/agentkeeper/agentkeeper.toml"]
    for script in ("postinst", "prerm", "postrm"):
        run(["sh", "-n", str(control / script)])

    tree = tmp_path / "tree"
    run(["dpkg-deb", "--extract", str(deb), str(tree)])
    binary = tree / "usr" / "bin" / "agentkeeper"
    assert run([str(binary), "--version"]).stdout.startswith(f"agentkeeper {VERSION} (commit ")
    man = gzip.decompress((tree / "usr/share/man/man1/agentkeeper.1.gz").read_bytes()).decode()
    assert man.count(".TH agentkeeper 1") == 1 and "\\-\\-print\\-config" in man
    assert "_agentkeeper()" in (tree / "usr/share/bash-completion/completions/agentkeeper").read_text()
    # The packaged config loads, and a daemon runs with it (its data-dir is moved to a temp
    # dir: /var/lib/agentkeeper is the service's).
    config = tree / "etc" / "agentkeeper" / "agentkeeper.toml"
    printed = run([str(binary), f"--config={config}", "--print-config"]).stdout
    assert f'data-dir = "/var/lib/agentkeeper"  # {config} line ' in printed, printed
    # The packaged model loads (installed, /usr/share/agentkeeper/models is where it looks).
    models = tree / "usr" / "share" / "agentkeeper" / "models"
    for file in MODEL_FILES:
        assert (models / "all-minilm-l6-v2" / file).read_bytes() == (ROOT / "models/all-minilm-l6-v2" / file).read_bytes()
    logged = serve_and_probe(binary, tmp_path, config=config, args=(f"--search-model={models}",))
    assert MODEL_LOADED in logged, logged


def test_the_systemd_unit_verifies_and_starts_the_packaged_binary_with_the_packaged_config(deb, tmp_path):
    tree = tmp_path / "tree"
    run(["dpkg-deb", "--extract", str(deb), str(tree)])
    unit = (tree / "usr/lib/systemd/system/agentkeeper.service").read_text()
    for line in (
        "Type=notify",
        "ExecStart=/usr/bin/agentkeeper --config=/etc/agentkeeper/agentkeeper.toml",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "DynamicUser=yes",
        "StateDirectory=agentkeeper",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=65536",
    ):
        assert line in unit.splitlines(), line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit as installed, pointed at the extracted binary (verify checks it is executable).
    local = tmp_path / "agentkeeper.service"
    local.write_text(unit.replace("ExecStart=/usr/bin/agentkeeper", f"ExecStart={tree}/usr/bin/agentkeeper"))
    done = subprocess.run([analyze, "verify", "--man=no", str(local)], capture_output=True, text=True)
    # Unknown or misspelt directives are only warnings: any output at all fails.
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), done


# --- the tarball -------------------------------------------------------------------------


def test_the_tarball_holds_binary_readme_license_unit_config_completions_man_pages_and_sums_check(
    tarball, deb, binary, tmp_path
):
    name = f"agentkeeper-{VERSION}-x86_64-linux"
    with tarfile.open(tarball) as archive:
        members = {member.name: member for member in archive.getmembers()}
        archive.extractall(tmp_path, filter="data")
    expected = {
        f"{name}/{path}"
        for path in (
            "agentkeeper",
            "README.md",
            "LICENSE",
            "agentkeeper.service",
            "agentkeeper.toml",
            *(f"man/{page}" for page in man_pages(binary, tmp_path)),
            "completions/agentkeeper.bash",
            "completions/_agentkeeper",
            "completions/agentkeeper.fish",
            *(f"models/all-minilm-l6-v2/{file}" for file in MODEL_FILES),
        )
    }
    assert {n for n, m in members.items() if m.isfile()} == expected
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    unpacked = tmp_path / name
    assert (unpacked / "README.md").read_text() == (ROOT / "README.md").read_text()
    assert run([str(unpacked / "agentkeeper"), "--version"]).stdout.startswith(f"agentkeeper {VERSION} ")
    # No flag: the daemon finds models/ beside its binary.
    logged = serve_and_probe(unpacked / "agentkeeper", tmp_path)
    assert MODEL_LOADED in logged and str(unpacked / "models") in logged, logged

    sums = Path(run([str(BUILD), "sums", str(tarball.parent)]).stdout.split()[-1])
    lines = sums.read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in lines) == sorted([tarball.name, deb.name])
    for line in lines:
        digest, file = line.split("  ")
        assert hashlib.sha256((sums.parent / file).read_bytes()).hexdigest() == digest, file
    run(["sha256sum", "--check", "--strict", sums.name], cwd=sums.parent)


# --- the container recipe ----------------------------------------------------------------


def containerfile() -> str:
    return (ROOT / "packaging" / "container" / "Containerfile").read_text()


def runtime_stage() -> str:
    """The Containerfile from its last FROM on: what the image runs."""
    text = containerfile()
    return text[text.rindex("\nFROM ") :]


def test_the_container_recipe_is_multi_stage_non_root_with_a_volume_ports_and_a_readyz_healthcheck():
    text = containerfile()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2, "a build stage and a runtime stage"
    runtime = runtime_stage()
    assert re.search(r"^USER 65532:65532$", runtime, re.MULTILINE), "runs as a non-root user"
    assert 'VOLUME ["/var/lib/agentkeeper"]' in runtime
    assert re.search(r"^EXPOSE 7070 9090$", runtime, re.MULTILINE)
    assert 'CMD ["/usr/bin/agentkeeper", "probe", "127.0.0.1:9090", "--path=/readyz"]' in runtime
    assert "cargo build --release --locked" in text
    assert "COPY models/all-minilm-l6-v2 /usr/share/agentkeeper/models/all-minilm-l6-v2" in runtime


def test_the_container_images_settings_are_ones_the_daemon_accepts_and_its_healthcheck_passes(binary, tmp_path):
    runtime = runtime_stage()
    env_block = re.search(r"^ENV (.*?)(?<!\\)\n", runtime, re.MULTILINE | re.DOTALL)
    assert env_block, "the runtime stage sets the daemon's settings with ENV"
    settings = dict(re.findall(r"(AGENTKEEPER_[A-Z_]+)=(\S+)", env_block.group(1)))
    assert settings == {
        "AGENTKEEPER_ADDR": "0.0.0.0:7070",
        "AGENTKEEPER_METRICS_ADDR": "0.0.0.0:9090",
        "AGENTKEEPER_DATA_DIR": "/var/lib/agentkeeper",
        "AGENTKEEPER_LOG_FORMAT": "json",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTKEEPER_")} | settings
    printed = run([str(binary), "--print-config"], env=env).stdout
    for variable, value in settings.items():
        key = variable.removeprefix("AGENTKEEPER_").lower().replace("_", "-")
        assert f'{key} = "{value}"  # {variable}' in printed, printed
    # The image's settings on this machine, the ports moved to free ones: the healthcheck's
    # command passes once the daemon serves.
    env |= {"AGENTKEEPER_ADDR": "127.0.0.1:0", "AGENTKEEPER_METRICS_ADDR": "127.0.0.1:0"}
    env["AGENTKEEPER_DATA_DIR"] = str(tmp_path / "data")
    ready = tmp_path / "ready.json"
    daemon = subprocess.Popen([str(binary), f"--ready-file={ready}"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until("the ready file", lambda: ready.exists() or daemon.poll() is not None)
        assert daemon.poll() is None, daemon.stderr.read()
        http = json.loads(ready.read_text())["http"]
        run([str(binary), "probe", http, "--path=/readyz"])
    finally:
        daemon.terminate()
        daemon.wait(timeout=HANG_GUARD)
    logs = daemon.stderr.read().splitlines()
    assert logs and all(line.startswith("{") for line in logs), "log-format json applies"


# --- the .deb under a real systemd -------------------------------------------------------


def boot_systemd_container(deb: Path, tmp: Path) -> str:
    """Boots this machine's own system, read-only under an overlay, as a systemd container
    (systemd-nspawn, private network), runs systemd_trial.sh in it as a boot-time service with
    the .deb at /dist, and returns what the trial wrote."""
    root, upper, work, out = tmp / "root", tmp / "upper", tmp / "work", tmp / "out"
    for path in (root, upper, work, out):
        path.mkdir()
    run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={upper},workdir={work}", str(root)])
    try:
        units = root / "etc" / "systemd" / "system"
        (units / "agentkeeper-trial.service").write_text(
            "[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\nExecStart=/bin/sh /trial/systemd_trial.sh\n"
        )
        wants = units / "multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        (wants / "agentkeeper-trial.service").symlink_to("/etc/systemd/system/agentkeeper-trial.service")
        booted = subprocess.run(
            [
                "systemd-nspawn",
                f"--directory={root}",
                "--boot",
                "--private-network",
                "--register=no",
                "--link-journal=no",
                "--keep-unit",
                f"--bind-ro={Path(__file__).parent}:/trial",
                f"--bind-ro={deb.parent}:/dist",
                f"--bind={out}:/out",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=240,
        )
        trial = out / "trial.log"
        assert trial.exists(), f"the trial never ran: {booted.stdout[-3000:]}\n{booted.stderr[-3000:]}"
        return trial.read_text()
    finally:
        subprocess.run(["umount", str(root)], check=False)


def trial_step(log: str, name: str) -> str:
    """The output of one step of systemd_trial.sh."""
    steps = dict(part.split("\n", 1) for part in log.split("== ")[1:])
    assert name in steps, log
    return steps[name]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemd-nspawn") is None, reason="needs root and systemd-nspawn")
def test_the_deb_under_systemd_starts_notifies_is_restarted_by_the_watchdog_and_refuses_a_bad_key(deb, tmp_path):
    log = boot_systemd_container(deb, tmp_path)
    assert "timed out" not in log, log
    installed = trial_step(log, "install")
    for line in (
        "Type=notify",
        "ActiveState=active",
        "StatusText=serving gRPC on 127.0.0.1:7070 and HTTP on 127.0.0.1:9090",
        "DynamicUser=yes",
        "WatchdogUSec=30s",
        "UnitFileState=enabled",
        "127.0.0.1:9090/readyz HTTP/1.0 200 OK: ready",
    ):
        assert line in installed.splitlines(), f"{line!r} in:\n{installed}"
    watchdog = trial_step(log, "watchdog").splitlines()
    for line in (
        "NRestarts=1",
        "ActiveState=active",
        "agentkeeper.service: Watchdog timeout (limit 2s)!",
        "agentkeeper.service: Failed with result 'watchdog'.",
    ):
        assert line in watchdog, f"{line!r} in:\n{log}"
    refused = trial_step(log, "bad-config").splitlines()
    for line in (
        "ActiveState=failed",
        "ExecMainStatus=2",
        "NRestarts=0",
        'agentkeeper: /etc/agentkeeper/agentkeeper.toml line 2: metric-addr: unknown key (did you mean `metrics-addr`?)',
    ):
        assert line in refused, f"{line!r} in:\n{log}"
    purged = trial_step(log, "purge").splitlines()
    assert "LoadState=not-found" in purged and "state kept" in purged, log
