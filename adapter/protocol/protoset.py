"""Load `.proto` files at run time into a descriptor pool, with no generated code.

    >>> protos = ProtoSet.load([Path("protos")])
    >>> [s.full_name for s in protos.services]
    ['shop.coupon.v1.CouponService', ...]
"""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

from adapter.errors import ProtoError

#: Folder holding `kafka_rpc/options.proto` (shipped in the package; `protos/kafka_rpc/options.proto`
#: of a checkout links to it), always on the import path. Compile your own protos that import the
#: options with ``-I "$(python -c 'import adapter.protocol.protoset as p; print(p.OPTIONS_ROOT)')"``.
OPTIONS_ROOT = Path(__file__).resolve().parent / "protos"


@dataclass(frozen=True)
class ProtoSet:
    """The services defined under some folders, in a pool of their own."""

    pool: descriptor_pool.DescriptorPool
    services: tuple[ServiceDescriptor, ...]

    @classmethod
    def load(cls, roots: Sequence[Path]) -> ProtoSet:
        """Compile every `.proto` under `roots` (and what they import) with grpcio-tools."""
        files: dict[str, Path] = {}
        for root in roots:
            for path in sorted(root.rglob("*.proto")):
                name = path.relative_to(root).as_posix()
                if name in files and files[name] != path:
                    raise ProtoError(f"{name} is found under two --proto-path folders: {files[name]} and {path}")
                files[name] = path
        if not files:
            raise ProtoError(f"no .proto files under {', '.join(map(str, roots))}")
        file_set = _compile(roots, [files[name] for name in sorted(files)])
        pool = descriptor_pool.DescriptorPool()
        for proto in file_set.file:
            pool.Add(proto)
        services = tuple(
            pool.FindServiceByName(f"{proto.package}.{svc.name}" if proto.package else svc.name)
            for proto in file_set.file
            if proto.name in files
            for svc in proto.service
        )
        return cls(pool=pool, services=services)

    def include(self, file: FileDescriptor) -> None:
        """Add a compiled-in file (and its imports) to the pool, e.g. for reflection."""
        try:
            self.pool.FindFileByName(file.name)
            return
        except KeyError:
            pass
        for dependency in file.dependencies:
            self.include(dependency)
        self.pool.Add(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))


def _compile(roots: Sequence[Path], paths: list[Path]) -> descriptor_pb2.FileDescriptorSet:
    # Absolute paths everywhere: a file name is never taken for one of protoc's flags (a file
    # named "--plugin=x.proto" would be one), and protoc names each file by its root.
    # (absolute(), not resolve(): a linked file must keep the path under its own root.)
    includes = [p.absolute() for p in (*roots, OPTIONS_ROOT, Path(str(importlib.resources.files("grpc_tools") / "_proto")))]
    names = [str(path.absolute()) for path in paths]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        # A child process, so protoc's error text can be captured and shown.
        result = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", *(f"-I{p}" for p in includes),
             f"--descriptor_set_out={out}", "--include_imports", *names],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise ProtoError(f"protoc failed:\n{result.stderr.strip()}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
