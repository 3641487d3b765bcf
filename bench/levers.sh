#!/usr/bin/env bash
# The lever measurements of docs/performance.md: the adapter (and the ping-pong floor) with one
# change at a time, against baselines taken before and after. Results: bench/results/levers/.
#   bash bench/levers.sh            # about 10 minutes; run it on a quiet machine
#   .venv/bin/python -m bench --compare bench/results/levers/*.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=bench/results/levers
CRC=${CRC32C_DIR:-/tmp/bench-crc32c}
mkdir -p "$OUT"
# crc32c (C CRC-32C for kafka-python) in a folder of its own: the project's .venv stays as it is.
[ -d "$CRC/crc32c" ] || .venv/bin/pip install -q --target "$CRC" crc32c==2.9.post0

common=(--only adapter --payloads 100 10240 --in-flight 1 64 --warmup 2 --duration 5 --memory-in-flight 0 --out "$OUT" --json-only)
$PY -m bench "${common[@]}" --name a0-baseline
$PY -m bench "${common[@]}" --name a1-crc32c --pythonpath "$CRC"
$PY -m bench "${common[@]}" --name a2-linger1 --variant linger=1
$PY -m bench "${common[@]}" --name a3-commit200ms --variant commit=0.2
$PY -m bench "${common[@]}" --name a4-switch1ms --variant switch=0.001
$PY -m bench "${common[@]}" --name a5-replyfetch10 --variant replyfetch=10
$PY -m bench "${common[@]}" --name a6-sync-servicer --handler-target bench.servicer:SyncEcho
$PY -m bench "${common[@]}" --name a7-all --pythonpath "$CRC" --variant commit=0.2,switch=0.001
$PY -m bench "${common[@]}" --name a9-baseline-again

pp=(--only pingpong --payloads 100 10240 --in-flight 1 64 --warmup 2 --duration 5 --out "$OUT" --json-only)
$PY -m bench "${pp[@]}" --name p0-baseline
$PY -m bench "${pp[@]}" --name p1-crc32c --pythonpath "$CRC"
$PY -m bench "${pp[@]}" --name p2-fetchwait500 --pingpong-args "--fetch-max-wait-ms 500"
$PY -m bench "${pp[@]}" --name p3-group-replies --pingpong-args "--group auto"
$PY -m bench "${pp[@]}" --name p4-linger1 --pingpong-args "--linger-ms 1"

$PY -m bench --compare "$OUT"/*.json > "$OUT/compare.md"
echo "wrote $OUT/compare.md"
