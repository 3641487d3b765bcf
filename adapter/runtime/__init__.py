"""The plumbing both processes share: typed settings (`config`), command-line and environment
parsing (`cli`), logs, Prometheus metrics, OpenTelemetry tracing, and the thread-to-loop
hand-off (`handoff`). Imports only `protocol` (topic names) and `adapter.errors`."""
