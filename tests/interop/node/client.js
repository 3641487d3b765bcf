// A Node gRPC client (@grpc/grpc-js + @grpc/proto-loader) calling rpctest.v1.Kitchen through the
// kafka-rpc frontend. Run by tests/test_interop_node.py:
//
//   node client.js ADDRESS PROTO_DIR...
//
// PROTO_DIRs are the include folders for kitchen.proto (our protos/ and one holding
// google/protobuf/*.proto). Prints one JSON line per case; bytes are base64.
'use strict';

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [address, ...includeDirs] = process.argv.slice(2);
if (!address || includeDirs.length === 0) {
  console.error('usage: node client.js ADDRESS PROTO_DIR...');
  process.exit(2);
}

const definition = protoLoader.loadSync('rpctest/v1/kitchen.proto', {
  includeDirs,
  keepCase: true,
  longs: String, // int64 as decimal strings: no precision lost
  enums: String,
  defaults: false,
  oneofs: true,
});
const { Kitchen } = grpc.loadPackageDefinition(definition).rpctest.v1;
const kitchen = new Kitchen(address, grpc.credentials.createInsecure());

function deadline(seconds) {
  return new Date(Date.now() + seconds * 1000);
}

// Call a unary method; resolve with the reply or error, and the status (trailing metadata).
function call(method, request, metadata, seconds) {
  return new Promise((resolve) => {
    let outcome = null;
    let status = null;
    const done = () => outcome && status && resolve({ ...outcome, status });
    const c = kitchen[method](request, metadata || new grpc.Metadata(), { deadline: deadline(seconds) },
      (error, reply) => { outcome = error ? { error } : { reply }; done(); });
    c.on('status', (s) => { status = s; done(); });
  });
}

// Follow a call that streams replies (server streaming or bidi) to its end: the replies, then the
// error (when the status is not OK) and the status. `onData(item, call)` may write or cancel.
function follow(call, onData) {
  return new Promise((resolve) => {
    const items = [];
    let error = null;
    call.on('data', (item) => { items.push(item); if (onData) onData(item, call); });
    call.on('error', (e) => { error = e; });
    call.on('status', (status) => {
      // Let any data and 'error' emitted alongside the status reach their listeners first.
      setImmediate(() => resolve({ items, error, status }));
    });
  });
}

// Write items to a client or bidi stream, waiting for 'drain' when grpc-js asks to, then end it
// unless `end` is false.
async function writeAll(call, items, end = true) {
  for (const item of items) {
    if (!call.write(item)) await new Promise((resolve) => call.once('drain', resolve));
  }
  if (end) call.end();
}

// Call a client-streaming method with these items; resolve like call().
function collect(method, items, seconds) {
  return new Promise((resolve) => {
    let outcome = null;
    let status = null;
    const done = () => outcome && status && resolve({ ...outcome, status });
    const c = kitchen[method](new grpc.Metadata(), { deadline: deadline(seconds) },
      (error, reply) => { outcome = error ? { error } : { reply }; done(); });
    c.on('status', (s) => { status = s; done(); });
    writeAll(c, items);
  });
}

function range(n) {
  return Array.from({ length: n }, (_, i) => i);
}

// A streamed call's outcome, for printing.
function streamed(name, result, extra) {
  return {
    case: name, ...extra, items: result.items, error: result.error && failure(result.error),
    code: result.status.code, details: result.status.details, trailers: result.status.metadata,
  };
}

// JSON with Buffers as base64 and Metadata as {key: [values]}.
function plain(value) {
  if (Buffer.isBuffer(value)) return value.toString('base64');
  if (value instanceof grpc.Metadata) {
    const out = {};
    for (const [key, values] of Object.entries(value.toJSON())) out[key] = values.map(plain);
    return out;
  }
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

function print(object) {
  process.stdout.write(JSON.stringify(plain(object)) + '\n');
}

function failure(error) {
  return { code: error.code, details: error.details, metadata: error.metadata };
}

async function main() {
  // Unicode strings, raw bytes, 64-bit integers, a map, an enum and a oneof, echoed back.
  const everything = {
    scalars: {
      s: 'héllo wörld ✓ 日本 🎉',
      by: Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
      i64: '-9223372036854775808',
      u64: '18446744073709551615',
      d: 1.5,
      b: true,
    },
    color: 'GREEN',
    tags: ['ç', '日本', ''],
    counts: { x: '1', 'ключ': '-4611686018427387904' },
    text: 'ünï ✓',
    blob: Buffer.from([0, 255, 0, 255, 16]),
  };
  const echo = await call('Echo', everything, null, 20);
  print({ case: 'echo', sent: everything, reply: echo.reply, error: echo.error && failure(echo.error) });

  const abort = await call('Fail', { mode: 'ABORT', code: 5, message: 'nicht gefunden ✗' }, null, 20);
  print({ case: 'abort', reply: abort.reply, error: abort.error && failure(abort.error) });

  const rich = await call('Fail', { mode: 'RICH', code: 3, message: 'bad field' }, null, 20);
  print({ case: 'rich', reply: rich.reply, error: rich.error && failure(rich.error) });

  const metadata = new grpc.Metadata();
  metadata.add('x-user', 'ann');
  metadata.add('x-token-bin', Buffer.from([0, 1, 254, 255]));
  metadata.add('traceparent', '00-abc-def-01');
  const meta = await call('Meta', {}, metadata, 20);
  print({
    case: 'meta', reply: meta.reply, error: meta.error && failure(meta.error),
    trailers: meta.status.metadata, code: meta.status.code,
  });

  const started = Date.now();
  const sleep = await call('Sleep', { seconds: 3 }, null, 0.5);
  print({
    case: 'deadline', reply: sleep.reply, error: sleep.error && failure(sleep.error),
    seconds: (Date.now() - started) / 1000,
  });

  // Server streaming, sync and async handlers: every item, in order, then OK.
  for (const method of ['CountUp', 'AsyncCountUp']) {
    for (const n of [0, 1, 1000]) {
      const result = await follow(kitchen[method]({ n, size: 3 }, { deadline: deadline(30) }));
      print(streamed(`${method}-${n}`, result));
    }
  }

  // A handler that aborts before item 5: items 0-4, then FAILED_PRECONDITION.
  for (const method of ['CountUp', 'AsyncCountUp']) {
    const result = await follow(kitchen[method]({ n: 10, fail_at: 5 }, { deadline: deadline(30) }));
    print(streamed(`${method}-fail`, result));
  }

  // Client streaming, sync and async handlers.
  for (const method of ['Collect', 'AsyncCollect']) {
    for (const n of [0, 500]) {
      const sent = range(n).map((i) => ({ i, data: Buffer.from('ab') }));
      const result = await collect(method, sent, 30);
      print({
        case: `${method}-${n}`, reply: result.reply, error: result.error && failure(result.error),
        code: result.status.code,
      });
    }
  }

  // Bidi: 100 items written (and the request stream ended) while replies stream back.
  {
    const chat = kitchen.Chat({ deadline: deadline(30) });
    const replies = follow(chat);
    await writeAll(chat, range(100).map((i) => ({ i, data: Buffer.from([i]), tag: `n${i}` })));
    print(streamed('chat', await replies));
  }

  // Bidi ping-pong with the request stream left open: each item written once the reply to the one
  // before it has arrived; the fourth is tagged "fail", so the handler aborts mid-stream.
  {
    const chat = kitchen.Chat({ deadline: deadline(30) });
    let next = 0;
    const send = () => { chat.write({ i: next, tag: next === 3 ? 'fail' : '' }); next += 1; };
    const result = follow(chat, () => { if (next <= 3) send(); });
    send();
    print(streamed('chat-fail', await result, { written: next }));
  }

  // A client-side cancel of a stream the handler would send forever, once 3 items have arrived.
  for (const method of ['Watch', 'AsyncWatch']) {
    const tag = `node-cancel-${method}`;
    const started = Date.now();
    let seen = 0;
    const result = await follow(kitchen[method]({ tag }, { deadline: deadline(30) }), (item, call) => {
      seen += 1;
      if (seen === 3) call.cancel();
    });
    print(streamed(`${method}-cancel`, result, { tag, seconds: (Date.now() - started) / 1000 }));
  }

  // Deadlines on streams: a server stream that never ends, and a bidi call whose request stream
  // stays open after one reply.
  {
    const tag = 'node-deadline-Watch';
    const started = Date.now();
    const result = await follow(kitchen.Watch({ tag }, { deadline: deadline(1) }));
    print(streamed('Watch-deadline', result, { tag, seconds: (Date.now() - started) / 1000 }));
  }
  {
    const started = Date.now();
    const chat = kitchen.Chat({ deadline: deadline(1) });
    const result = follow(chat);
    chat.write({ i: 21 });
    print(streamed('chat-deadline', await result, { seconds: (Date.now() - started) / 1000 }));
  }

  kitchen.close();
  print({ event: 'done' });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
