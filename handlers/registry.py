"""What a handler process can run: servicers and registries of decorated functions.

A target is named ``MODULE:ATTR`` on the command line, where ATTR is

- a class derived from a generated ``*Servicer`` (instantiated with no arguments),
- an instance of one (a servicer written for ``grpc.server`` works unchanged), or
- a `ServiceRegistry` of decorated functions::

      mail = ServiceRegistry(mail_pb2.DESCRIPTOR.services_by_name["MailService"])

      @mail.method("SendMail")
      async def send_mail(request, context):
          return mail_pb2.SendMailReply(result=mail_pb2.SENT)
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor

from adapter.errors import ConfigError
from adapter.protocol.routing import method_path


@dataclass(frozen=True)
class Method:
    """One callable method: its function and how to read and write its messages."""

    path: str
    func: Callable[..., Any]
    request_deserializer: Callable[[bytes], Any]
    response_serializer: Callable[[Any], bytes]
    client_streaming: bool = False
    server_streaming: bool = False
    #: A plain ``def`` (or generator): it runs on the dispatcher's thread pool.
    blocking: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocking", not inspect.iscoroutinefunction(self.func)
                           and not inspect.isasyncgenfunction(self.func))


class ServiceRegistry:
    """Handler functions for one service, registered with `method`."""

    def __init__(self, service: ServiceDescriptor) -> None:
        self.service = service
        self.methods: dict[str, Method] = {}

    def method(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: `func(request, context)` (``def`` or ``async def``) serves method `name`."""
        desc = self.service.methods_by_name.get(name)
        if desc is None:
            raise ConfigError(f"{self.service.full_name} has no method {name!r}")
        request_cls = message_factory.GetMessageClass(desc.input_type)

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            self.methods[method_path(desc)] = Method(
                path=method_path(desc),
                func=func,
                request_deserializer=request_cls.FromString,
                response_serializer=lambda message: message.SerializeToString(),
                client_streaming=desc.client_streaming,
                server_streaming=desc.server_streaming,
            )
            return func

        return register


class _CaptureServer:
    """Stands in for a grpc.Server to read what a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.services[service] = handlers


def load_target(spec: str) -> object:
    """Import ``MODULE:ATTR``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"handler target {spec!r} must be MODULE:ATTR")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for {spec!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None


def collect(targets: Iterable[object]) -> tuple[dict[str, Method], list[ServiceDescriptor]]:
    """The methods (by path) and service descriptors of servicers and registries."""
    methods: dict[str, Method] = {}
    services: list[ServiceDescriptor] = []
    for target in targets:
        if isinstance(target, ServiceRegistry):
            found, service = dict(target.methods), [target.service]
        else:
            found, service = _from_servicer(_instantiate(target) if inspect.isclass(target) else target)
        for path in found:
            if path in methods:
                raise ConfigError(f"{path} is served by two targets")
        methods.update(found)
        services.extend(service)
    return methods, services


def _instantiate(cls: type) -> object:
    try:
        return cls()
    except TypeError as exc:
        raise ConfigError(f"{cls.__qualname__} cannot be created with no arguments ({exc}); name an instance instead") from exc


def _from_servicer(servicer: object) -> tuple[dict[str, Method], list[ServiceDescriptor]]:
    adder = _find_adder(type(servicer))
    capture = _CaptureServer()
    adder(servicer, capture)
    methods: dict[str, Method] = {}
    services = []
    for service_name, handlers in capture.services.items():
        services.append(descriptor_pool.Default().FindServiceByName(service_name))
        for name, handler in handlers.items():
            path = f"/{service_name}/{name}"
            func = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
            methods[path] = Method(path, func, handler.request_deserializer, handler.response_serializer,
                                   handler.request_streaming, handler.response_streaming)
    return methods, services


def _find_adder(cls: type) -> Callable[[Any, Any], None]:
    # Generated code pairs each `FooServicer` with `add_FooServicer_to_server` in its module.
    for base in cls.__mro__:
        module = importlib.import_module(base.__module__)
        adder = getattr(module, f"add_{base.__name__}_to_server", None)
        if adder is not None:
            return adder
    raise ConfigError(
        f"{cls.__qualname__} is not a generated *Servicer subclass (no add_*_to_server found in its bases)"
    )
