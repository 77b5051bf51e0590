"""Regenerate ``converters/proto/*.desc`` from the ``.proto`` schemas beside them.

Needs ``grpcio-tools`` (protoc as a Python package; a test extra, not a run-time
dependency). Usage: ``python tools/compile_protos.py [--check]``; with ``--check``
it writes nothing and exits 1 when a ``.desc`` is stale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent.parent / "converters" / "proto"


def compile_proto(proto: Path) -> bytes:
    """Return the serialized FileDescriptorSet protoc makes from ``proto``."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.desc"
        rc = protoc.main(["protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}", proto.name])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
        return out.read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that every .desc is current")
    args = parser.parse_args(argv)
    stale = []
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        desc = proto.with_suffix(".desc")
        data = compile_proto(proto)
        if desc.exists() and desc.read_bytes() == data:
            continue
        stale.append(desc.name)
        if not args.check:
            desc.write_bytes(data)
            print(f"wrote {desc}")
    if args.check and stale:
        print("stale: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
