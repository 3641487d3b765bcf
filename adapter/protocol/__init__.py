"""The wire protocol and what is derived from `.proto` files: record headers and bodies
(`wire`), topics and keys per method (`routing`, `topics`), compiling `.proto` folders
(`protoset`). Pure: imports nothing of the project but `adapter.errors`; no Kafka, no gRPC
server, no threads. docs/protocol.md is its prose twin."""
