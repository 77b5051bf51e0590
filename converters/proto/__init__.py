"""Protocol-buffer message classes built from schemas this project owns.

Each schema lives here twice: as the human-readable ``NAME.proto`` and as
``NAME.desc``, the ``FileDescriptorSet`` that ``protoc`` compiles from it
(``python tools/compile_protos.py`` regenerates every ``.desc``; a test checks
they are current). Message classes are made at run time from the descriptor
with ``protobuf``'s own ``message_factory``, so no generated ``_pb2.py`` is
shipped: pre-generated modules are what break on new protobuf releases
("Descriptors cannot be created directly").
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from types import MappingProxyType

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_DIR = Path(__file__).resolve().parent


@cache
def load_messages(schema: str) -> Mapping[str, type]:
    """Return ``{full message name: class}`` for the schema ``schema`` (``"caffe"``, ...).

    Each schema gets its own ``DescriptorPool`` so two schemas may reuse a package
    name without clashing with each other or with any ``_pb2`` module a user imports.
    """
    data = (PROTO_DIR / f"{schema}.desc").read_bytes()
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    pool = descriptor_pool.DescriptorPool()
    for fdp in fds.file:
        pool.Add(fdp)
    classes: dict[str, type] = {}

    def visit(desc) -> None:
        classes[desc.full_name] = message_factory.GetMessageClass(desc)
        for nested in desc.nested_types:
            visit(nested)

    for fdp in fds.file:
        fd = pool.FindFileByName(fdp.name)
        for desc in fd.message_types_by_name.values():
            visit(desc)
    return MappingProxyType(classes)
