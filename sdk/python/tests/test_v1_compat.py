"""Drop-in check: the repository's v1 README flows (tests/compat_v1, written for the published
agentkeeper 0.1.1) pass unchanged with this SDK installed in its place."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

COMPAT = Path(__file__).resolve().parents[3] / "tests" / "compat_v1"


@pytest.mark.skipif(not (COMPAT / "test_v1_readme.py").exists(), reason="tests/compat_v1 not in this checkout")
def test_v1_readme_flows_pass_with_this_sdk(binary):
    env = dict(os.environ, AGENTKEEPER_BIN=binary, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio",
         "--rootdir", str(COMPAT), str(COMPAT)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    import agentkeeper

    assert Path(agentkeeper.__file__).resolve().parents[1] == Path(__file__).resolve().parents[1]
