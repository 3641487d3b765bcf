"""The gRPC frontend, `python -m adapter`: a grpc.aio server whose methods are Kafka calls
(`gateway`), with reflection and per-service health (`consumers`: who consumes each request
topic), and its command line (`main`). Imports `caller`, `protocol`, `runtime`; nothing
imports it but its entry point."""
