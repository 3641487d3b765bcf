#!/usr/bin/env bash
# Foreground demo: the example handlers and the gRPC frontend; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
LISTEN="${KAFKA_RPC_LISTEN:-127.0.0.1:50051}"
# The coupon handler sends its mails through the frontend.
export COUPON_MAIL_TARGET="${COUPON_MAIL_TARGET:-$LISTEN}"

pids=()
stop() {
  trap - INT TERM EXIT
  echo "run: stopping"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

$BIN/python -m handlers examples.shop.mail:MailService examples.shop.coupon:CouponService --group shop &
pids+=($!)
# Only the example services: protos/ also holds the test suite's rpctest.v1.Kitchen, which no
# handler serves here.
$BIN/python -m adapter --proto-path protos --service 'shop.*' --listen "$LISTEN" &
pids+=($!)
echo "run: frontend on $LISTEN; try:"
echo "  .tools/bin/grpcurl -plaintext -d '{\"user_id\":\"u1\",\"email\":\"ann@example.com\",\"campaign\":\"spring\"}' $LISTEN shop.coupon.v1.CouponService/IssueCoupon"
wait -n "${pids[@]}"
