"""The package type-checks under `mypy --strict` with pyproject.toml's settings, which relax no
check for any module."""

import subprocess
import sys
import tomllib
from pathlib import Path

SDK = Path(__file__).resolve().parents[1]


def test_mypy_strict_passes_on_the_package():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental"],
        cwd=SDK, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout


def test_the_mypy_settings_relax_nothing():
    settings = tomllib.loads((SDK / "pyproject.toml").read_text())["tool"]["mypy"]
    assert settings["strict"] is True
    assert "overrides" not in settings, "no module may have checks turned off"
    relaxing = {k for k in settings if k.startswith(("allow_", "ignore_")) or k.startswith("disallow") and not settings[k]}
    assert not relaxing, relaxing
