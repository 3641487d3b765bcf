"""Routes (adapter.protocol.routing) from generated descriptors and from .proto files loaded at run time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from rpctest.v1 import kitchen_pb2
from shop.coupon.v1 import coupon_pb2
from shop.mail.v1 import mail_pb2

from adapter.errors import ConfigError, ProtoError
from adapter.protocol.protoset import ProtoSet
from adapter.protocol.routing import Route, method_path, routes_for

PROTOS = Path(__file__).resolve().parent.parent / "protos"
KITCHEN = kitchen_pb2.DESCRIPTOR.services_by_name["Kitchen"]
MAIL = mail_pb2.DESCRIPTOR.services_by_name["MailService"]
COUPON = coupon_pb2.DESCRIPTOR.services_by_name["CouponService"]


def summary(routes: dict[str, Route]) -> dict[str, tuple[object, ...]]:
    """What a route says, without the descriptor objects (which differ between pools)."""
    return {
        path: (
            route.path,
            route.topic,
            route.key_field.name if route.key_field else None,
            route.input_type.full_name,
            route.output_type.full_name,
            route.client_streaming,
            route.server_streaming,
        )
        for path, route in routes.items()
    }


def load(tmp_path: Path, name: str, text: str) -> ProtoSet:
    (tmp_path / name).write_text(text)
    return ProtoSet.load([tmp_path])


HEADER = 'syntax = "proto3";\npackage t.v1;\nimport "kafka_rpc/options.proto";\n'


def test_default_topic_is_the_service_full_name() -> None:
    routes = routes_for([KITCHEN, COUPON])
    assert routes["/rpctest.v1.Kitchen/Echo"].topic == "rpctest.v1.Kitchen"
    assert routes["/rpctest.v1.Kitchen/Echo"].key_field is None
    assert routes["/shop.coupon.v1.CouponService/IssueCoupon"].topic == "shop.coupon.v1.CouponService"
    assert set(routes) == {method_path(m) for s in (KITCHEN, COUPON) for m in s.methods}
    assert len(routes) == len(KITCHEN.methods) + 1


def test_method_topic_option_and_partition_key() -> None:
    routes = routes_for([KITCHEN, MAIL, COUPON])
    keyed = routes["/rpctest.v1.Kitchen/Keyed"]
    assert (keyed.topic, keyed.key_field and keyed.key_field.name) == ("rpctest.keyed", "customer")
    send = routes["/shop.mail.v1.MailService/SendMail"]
    assert (send.topic, send.key_field and send.key_field.name) == ("SEND_MAIL", "user_id")
    assert routes["/shop.coupon.v1.CouponService/IssueCoupon"].key_field.name == "user_id"  # type: ignore[union-attr]
    assert send.input_type is mail_pb2.SendMailRequest.DESCRIPTOR
    assert send.output_type is mail_pb2.SendMailReply.DESCRIPTOR


def test_key_for_string_field() -> None:
    keyed = routes_for([KITCHEN])["/rpctest.v1.Kitchen/Keyed"]
    request = kitchen_pb2.KeyedRequest(customer="kundin-ö", seq=3)
    assert keyed.key_for(request.SerializeToString()) == "kundin-ö".encode()
    assert keyed.key_for(b"") == b""  # the field's default


def test_key_for_without_key_field_does_not_parse() -> None:
    echo = routes_for([KITCHEN])["/rpctest.v1.Kitchen/Echo"]
    assert echo.key_for(b"\xff not a message") is None


def test_key_for_undecodable_request_raises_decode_error() -> None:
    keyed = routes_for([KITCHEN])["/rpctest.v1.Kitchen/Keyed"]
    with pytest.raises(DecodeError):
        keyed.key_for(b"\x0a\x05ab")  # field 1 claims 5 bytes, has 2


def test_topic_prefix() -> None:
    routes = routes_for([KITCHEN, MAIL], topic_prefix="dev.")
    assert routes["/rpctest.v1.Kitchen/Echo"].topic == "dev.rpctest.v1.Kitchen"
    assert routes["/rpctest.v1.Kitchen/Keyed"].topic == "dev.rpctest.keyed"
    assert routes["/shop.mail.v1.MailService/SendMail"].topic == "dev.SEND_MAIL"


def test_invalid_topic_prefix_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SendMail"):
        routes_for([MAIL], topic_prefix="not ok/")


def test_runtime_descriptors_give_the_same_routes() -> None:
    protos = ProtoSet.load([PROTOS])
    names = {s.full_name for s in protos.services}
    assert names == {"rpctest.v1.Kitchen", "shop.mail.v1.MailService", "shop.coupon.v1.CouponService"}
    assert summary(routes_for(protos.services)) == summary(routes_for([KITCHEN, MAIL, COUPON]))
    assert summary(routes_for(protos.services, "x.")) == summary(routes_for([KITCHEN, MAIL, COUPON], "x."))


def test_runtime_key_for_matches_generated() -> None:
    runtime = routes_for(ProtoSet.load([PROTOS]).services)["/shop.mail.v1.MailService/SendMail"]
    request = mail_pb2.SendMailRequest(user_id="u-42", to="a@example.com").SerializeToString()
    assert runtime.key_for(request) == routes_for([MAIL])["/shop.mail.v1.MailService/SendMail"].key_for(request)
    assert runtime.key_for(request) == b"u-42"


def test_service_topic_option_and_method_override(tmp_path: Path) -> None:
    protos = load(tmp_path, "svc.proto", HEADER + """
message M { string s = 1; }
service S {
  option (kafka_rpc.service_topic) = "s-requests";
  rpc A(M) returns (M);
  rpc B(M) returns (M) { option (kafka_rpc.topic) = "b-requests"; }
}
service Plain { rpc C(M) returns (M); }
""")
    routes = routes_for(protos.services, topic_prefix="p.")
    assert {path: route.topic for path, route in routes.items()} == {
        "/t.v1.S/A": "p.s-requests",
        "/t.v1.S/B": "p.b-requests",
        "/t.v1.Plain/C": "p.t.v1.Plain",
    }


def test_proto_without_options_import_has_default_routes(tmp_path: Path) -> None:
    protos = load(tmp_path, "bare.proto", 'syntax = "proto3";\nmessage M {}\nservice Bare { rpc A(M) returns (M); }\n')
    assert summary(routes_for(protos.services)) == {"/Bare/A": ("/Bare/A", "Bare", None, "M", "M", False, False)}


def test_streaming_flags(tmp_path: Path) -> None:
    protos = load(tmp_path, "stream.proto", HEADER + """
message M {}
service S {
  rpc U(M) returns (M);
  rpc Server(M) returns (stream M);
  rpc Client(stream M) returns (M);
  rpc Both(stream M) returns (stream M);
}
""")
    flags = {path: (r.client_streaming, r.server_streaming) for path, r in routes_for(protos.services).items()}
    assert flags == {
        "/t.v1.S/U": (False, False),
        "/t.v1.S/Server": (False, True),
        "/t.v1.S/Client": (True, False),
        "/t.v1.S/Both": (True, True),
    }


KEYS_PROTO = HEADER + """
enum E { E_UNSPECIFIED = 0; E_ONE = 1; }
message K { string s = 1; int64 i = 2; bool b = 3; bytes by = 4; uint32 u = 5; E e = 6; sint32 neg = 7; }
service Keys {
  rpc ByS(K) returns (K) { option (kafka_rpc.partition_key) = "s"; }
  rpc ByI(K) returns (K) { option (kafka_rpc.partition_key) = "i"; }
  rpc ByB(K) returns (K) { option (kafka_rpc.partition_key) = "b"; }
  rpc ByBytes(K) returns (K) { option (kafka_rpc.partition_key) = "by"; }
  rpc ByU(K) returns (K) { option (kafka_rpc.partition_key) = "u"; }
  rpc ByE(K) returns (K) { option (kafka_rpc.partition_key) = "e"; }
  rpc ByNeg(K) returns (K) { option (kafka_rpc.partition_key) = "neg"; }
}
"""


def test_key_for_each_scalar_kind(tmp_path: Path) -> None:
    protos = load(tmp_path, "keys.proto", KEYS_PROTO)
    routes = routes_for(protos.services)
    k_class = message_factory.GetMessageClass(protos.pool.FindMessageTypeByName("t.v1.K"))
    request = k_class(s="ß", i=-9_000_000_000, b=True, by=b"\x00\xff", u=7, e=1, neg=-3).SerializeToString()
    keys = {path.rsplit("/", 1)[1]: route.key_for(request) for path, route in routes.items()}
    assert keys == {
        "ByS": "ß".encode(),
        "ByI": b"-9000000000",
        "ByB": b"true",
        "ByBytes": b"\x00\xff",
        "ByU": b"7",
        "ByE": b"1",
        "ByNeg": b"-3",
    }
    assert routes["/t.v1.Keys/ByB"].key_for(k_class(b=False).SerializeToString()) == b"false"
    assert routes["/t.v1.Keys/ByI"].key_for(b"") == b"0"


@pytest.mark.parametrize(
    ("field", "problem"),
    [
        ("missing", "is not a field of t.v1.Req"),
        ("tags", "must be a singular scalar field"),
        ("inner", "must be a singular scalar field"),
        ("counts", "must be a singular scalar field"),
    ],
)
def test_bad_partition_key_is_a_proto_error(tmp_path: Path, field: str, problem: str) -> None:
    protos = load(tmp_path, "bad_key.proto", HEADER + f"""
message Inner {{ string name = 1; }}
message Req {{ string id = 1; repeated string tags = 2; Inner inner = 3; map<string, int32> counts = 4; }}
service S {{
  rpc Call(Req) returns (Req) {{ option (kafka_rpc.partition_key) = "{field}"; }}
}}
""")
    with pytest.raises(ProtoError, match=re.escape(f"/t.v1.S/Call: partition_key '{field}' {problem}")):
        routes_for(protos.services)


def test_invalid_topic_option_is_a_config_error(tmp_path: Path) -> None:
    protos = load(tmp_path, "bad_topic.proto", HEADER + """
message M {}
service S { rpc A(M) returns (M) { option (kafka_rpc.topic) = "no spaces allowed"; } }
""")
    with pytest.raises(ConfigError, match=re.escape("topic of /t.v1.S/A")):
        routes_for(protos.services)


def test_bad_proto_raises_proto_error_with_protocs_message(tmp_path: Path) -> None:
    (tmp_path / "broken.proto").write_text('syntax = "proto3";\nmessage M { strin name = 1; }\n')
    with pytest.raises(ProtoError, match="protoc failed") as raised:
        ProtoSet.load([tmp_path])
    assert "broken.proto:2" in str(raised.value)
    assert '"strin" is not defined' in str(raised.value)


def test_no_proto_files_is_a_proto_error(tmp_path: Path) -> None:
    with pytest.raises(ProtoError, match=re.escape("no .proto files")):
        ProtoSet.load([tmp_path])
