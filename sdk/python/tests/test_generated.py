"""The checked-in agentkeeper/v1 modules match what scripts/generate_proto.py makes from proto/."""

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "generate_proto.py"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PROTO = Path(__file__).resolve().parents[3] / "proto" / "agentkeeper" / "v1" / "agentkeeper.proto"


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate_proto", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_proto"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not PROTO.exists(), reason="proto/ is not next to this SDK checkout")
def test_generated_modules_are_up_to_date():
    pytest.importorskip("grpc_tools")
    pinned = re.search(r'"grpcio-tools==([^"]+)"', PYPROJECT.read_text()).group(1)
    installed = importlib.metadata.version("grpcio-tools")
    assert installed == pinned, (
        f"grpcio-tools {installed} is installed, but the checked-in modules are generated with {pinned} "
        "(the version pyproject.toml pins in the test extra): pip install -e 'sdk/python[test]'"
    )
    generator = _load_generator()
    stale = generator.stale_files()
    assert not stale, "checked-in modules are stale; run python sdk/python/scripts/generate_proto.py\n" + "\n".join(stale)


def test_generated_modules_import_as_agentkeeper_v1():
    from agentkeeper.v1 import agentkeeper_pb2 as pb
    from agentkeeper.v1 import agentkeeper_pb2_grpc as stubs

    assert pb.WatchRequest.DESCRIPTOR.fields_by_name["from_sequence"].number == 2
    assert hasattr(stubs, "ClockServiceStub") and hasattr(pb, "AdvanceRequest")
    assert pb.DESCRIPTOR.package == "agentkeeper.v1"
