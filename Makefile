# Everything depends on `install`, so `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GRPCURL_VERSION := v1.9.4
PROTOS := $(shell find protos -name '*.proto' | sort)

.PHONY: help install proto kafka-up kafka-down kafka-cluster-up kafka-cluster-down run test check lint typecheck bench chaos tools clean

help:
	@echo "make run        start Kafka, the gRPC frontend (127.0.0.1:50051) and the example handlers"
	@echo "make test       install, compile protos, start Kafka, run the whole test suite (then its"
	@echo "                engine tests again on kafka-python)"
	@echo "make install    create $(VENV) with the project (editable) and dev tools"
	@echo "make proto      compile protos/ into gen/"
	@echo "make kafka-up   start the local Kafka broker (or reuse it);  make kafka-down  stop it"
	@echo "make kafka-cluster-up / kafka-cluster-down   a local three-node Kafka cluster (kafka/cluster.sh)"
	@echo "make check      ruff and mypy"
	@echo "make bench      benchmarks (see docs/performance.md)"
	@echo "make chaos      a 10-minute soak under random faults on a three-node cluster (CHAOS_ARGS=--help)"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@# Generated code lives in gen/: put it on the virtualenv's import path.
	@echo "$(CURDIR)/gen" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/kafka_rpc_gen.pth"
	@touch $@

proto: gen/.stamp

gen/.stamp: $(VENV)/.installed $(PROTOS)
	@rm -rf gen && mkdir -p gen
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen --grpc_python_out=gen $(PROTOS)
	@touch $@

tools: .tools/bin/grpcurl

.tools/bin/grpcurl:
	GOBIN=$(CURDIR)/.tools/bin go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

kafka-up:
	@bash kafka/broker.sh up

kafka-down:
	@bash kafka/broker.sh down

kafka-cluster-up:
	@bash kafka/cluster.sh up

kafka-cluster-down:
	@bash kafka/cluster.sh down

run: proto kafka-up
	@bash scripts/run-local.sh

# The whole suite on the default engine (confluent), then the tests marked `engines` on kafka-python.
# Each run ends with its slowest tests, to keep the suite's time in view.
test: proto tools kafka-up
	$(BIN)/pytest --durations=15 $(PYTEST_ARGS)
	KAFKA_RPC_KAFKA_CLIENT=kafka-python $(BIN)/pytest -m engines --durations=15 $(PYTEST_ARGS)

check: install
	$(BIN)/ruff check .
	$(BIN)/mypy

lint: check

bench: proto kafka-up
	$(BIN)/pip install -q -r bench/requirements.txt
	$(BIN)/python -m bench $(BENCH_ARGS)

chaos: proto
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

clean:
	rm -rf gen .pytest_cache .mypy_cache .ruff_cache
