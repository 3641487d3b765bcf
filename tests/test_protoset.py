"""adapter.protocol.protoset: loading .proto folders (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.errors import ProtoError
from adapter.protocol.protoset import ProtoSet

SERVICE = 'syntax = "proto3";\npackage odd.v1;\nmessage M {{ string s = 1; }}\nservice {name} {{ rpc Do(M) returns (M); }}\n'


def test_file_names_never_become_protoc_flags(tmp_path: Path) -> None:
    """#12.14: a file named like a flag is compiled as a file (it was passed to protoc as a flag)."""
    (tmp_path / "--plugin=protoc-gen-x.proto").write_text(SERVICE.format(name="Flag"))
    (tmp_path / "-o.proto").write_text(SERVICE.format(name="Out").replace("odd.v1", "odd.v2"))
    services = ProtoSet.load([tmp_path]).services
    assert sorted(s.full_name for s in services) == ["odd.v1.Flag", "odd.v2.Out"]


def test_a_broken_file_is_a_proto_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken.proto").write_text('syntax = "proto3";\nmessage {')
    with pytest.raises(ProtoError, match=r"broken\.proto"):
        ProtoSet.load([tmp_path])
