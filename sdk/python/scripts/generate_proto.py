#!/usr/bin/env python3
"""Generate the ``agentkeeper.v1`` protobuf and gRPC modules from ``proto/`` at the repo root.

Usage::

    python sdk/python/scripts/generate_proto.py            # rewrite sdk/python/agentkeeper/v1/
    python sdk/python/scripts/generate_proto.py --out DIR  # write DIR/agentkeeper/v1/ instead
    python sdk/python/scripts/generate_proto.py --check    # exit 1 if the checked-in files are stale

Needs ``grpcio-tools`` at the version the ``test`` extra pins (its protoc decides the protobuf
gencode version, hence the package's protobuf floor). No system ``protoc`` is used.

Post-processing, so the checked-in modules work as the package ``agentkeeper.v1``:

- imports of sibling generated modules are made absolute (``from agentkeeper.v1 import ...``);
- the type stub's dict form of a message (``_Union[Task, _Mapping]``) gets type arguments
  (``_Mapping[str, object]``), so that ``mypy --strict`` accepts the stub as it is;
- the gRPC module's runtime guard is lowered from the generating grpcio-tools version to the
  grpcio floor this package declares (``GRPCIO_MIN``): the stubs pass
  ``_registered_method=True`` (understood since 1.63) and the ``add_*_to_server`` helpers call
  ``server.add_registered_method_handlers`` (since 1.64). The test suite runs at that floor.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from pathlib import Path

SDK_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = SDK_DIR.parents[1]
PROTO_ROOT = REPO_DIR / "proto"
PROTO_FILES = ["agentkeeper/v1/agentkeeper.proto", "agentkeeper/v1/cluster.proto"]
PACKAGE_DIR = Path("agentkeeper") / "v1"
GENERATED = [f"{stem}{suffix}" for stem in ("agentkeeper", "cluster") for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
GRPCIO_MIN = "1.64.0"

INIT_TEXT = '"""Generated protobuf and gRPC modules for the ``agentkeeper.v1`` wire contract.\n\nRegenerate with ``python sdk/python/scripts/generate_proto.py``; do not edit by hand.\n"""\n'


def _fix(name: str, text: str) -> str:
    # `import agentkeeper.v1.agentkeeper_pb2` / `from agentkeeper.v1 import x` are already
    # absolute when protoc runs with -I proto/; normalise the bare form older plugins emit.
    text = re.sub(
        r"^import agentkeeper_pb2 as (\w+)$",
        r"from agentkeeper.v1 import agentkeeper_pb2 as \1",
        text,
        flags=re.M,
    )
    if name.endswith(".pyi"):
        text = re.sub(r"\b_Mapping\]", "_Mapping[str, object]]", text)
    if name.endswith("_grpc.py"):
        text = re.sub(
            r"^GRPC_GENERATED_VERSION = '[^']*'$",
            f"GRPC_GENERATED_VERSION = '{GRPCIO_MIN}'",
            text,
            flags=re.M,
        )
    return text


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) and write the fixed-up modules under ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory() as raw:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={raw}",
            f"--pyi_out={raw}",
            f"--grpc_python_out={raw}",
            *PROTO_FILES,
        ]
        code = protoc.main(args)
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        target = out_dir / PACKAGE_DIR
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            text = (Path(raw) / PACKAGE_DIR / name).read_text()
            path = target / name
            path.write_text(_fix(name, text))
            written.append(path)
        init = target / "__init__.py"
        init.write_text(INIT_TEXT)
        written.append(init)
    return written


def stale_files(checked_in: Path = SDK_DIR) -> list[str]:
    """Regenerate into a temp dir; return a unified diff per checked-in file that differs."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in generate(Path(tmp)):
            rel = fresh.relative_to(tmp)
            current = checked_in / rel
            new_text = fresh.read_text()
            old_text = current.read_text() if current.exists() else ""
            if new_text != old_text:
                diff = "".join(
                    difflib.unified_diff(
                        old_text.splitlines(keepends=True),
                        new_text.splitlines(keepends=True),
                        f"checked-in/{rel}",
                        f"regenerated/{rel}",
                        n=1,
                    )
                )
                problems.append(diff[:4000])
    return problems


def pinned_grpcio_tools() -> str:
    """The grpcio-tools version pyproject.toml pins (the checked-in modules come from it)."""
    match = re.search(r'"grpcio-tools==([^"]+)"', (SDK_DIR / "pyproject.toml").read_text())
    return match.group(1) if match else "?"


def main() -> int:
    from importlib.metadata import version

    installed, pinned = version("grpcio-tools"), pinned_grpcio_tools()
    if installed != pinned:
        print(
            f"warning: grpcio-tools {installed} is installed but pyproject.toml pins {pinned}; "
            "the output will differ from the checked-in modules (pip install -e 'sdk/python[test]')",
            file=sys.stderr,
        )
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SDK_DIR, help="directory holding agentkeeper/")
    parser.add_argument("--check", action="store_true", help="only report stale files")
    ns = parser.parse_args()
    if ns.check:
        problems = stale_files(ns.out)
        for p in problems:
            print(p)
        if problems:
            print("stale: run python sdk/python/scripts/generate_proto.py", file=sys.stderr)
            return 1
        print("generated modules are up to date")
        return 0
    for path in generate(ns.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
