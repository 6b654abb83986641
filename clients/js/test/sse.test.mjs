// The SSE fallback (docs/clients.md, section 15) in Node, where it reads `/sse` with fetch: the
// event-stream parser, the endpoints beside a /ws URL, a client held to SSE against the real
// server, and the fallback rules with a WebSocket that a test can make fail.

import assert from "node:assert/strict";
import { test } from "node:test";
import WebSocket from "ws";
import { connect } from "../dist/index.js";
import { endpoints, SseParser } from "../dist/sse.js";
import { Clarion, checkOnceInOrder, freePort, recorded, until } from "./helpers.mjs";

test("the event-stream parser: events split anywhere, CRLF, comments, multi-line data, named events skipped", () => {
  const events = [];
  const parser = new SseParser({ event: (data) => events.push(data) });
  const text =
    "retry: 3000\r\n\r\n: heartbeat\n\nevent: x\r\ndata: {\"a\":1}\r\n\r\n" +
    "id: e:1\ndata: line one\ndata:line two\n\ndata: {}\r\n\r\ndata\n\n";
  for (let i = 0; i < text.length; i += 3) parser.push(text.slice(i, i + 3));
  // The named event is not one of ours: skipped.
  assert.deepEqual(events, ["line one\nline two", "{}", ""]);
});

test("/sse and /publish sit beside the /ws URL's path", () => {
  assert.deepEqual(endpoints("wss://push.example.com/ws?x=1"), {
    sse: "https://push.example.com/sse",
    publish: "https://push.example.com/publish",
  });
  assert.deepEqual(endpoints("ws://127.0.0.1:9001/push/ws"), {
    sse: "http://127.0.0.1:9001/push/sse",
    publish: "http://127.0.0.1:9001/push/publish",
  });
});

test("transports is checked", () => {
  for (const transports of [[], ["smoke"], ["sse", "sse"], "sse"]) {
    assert.throws(() => connect("ws://127.0.0.1:1/ws", { transports }), TypeError);
  }
});

test("held to SSE: subscribe, HTTP publish, topics added and removed by reopening, a restart", async () => {
  const server = await Clarion.start();
  const r = recorded(server.url(), { transports: ["sse"], heartbeat: 5 });
  try {
    r.client.subscribe("a");
    assert.equal((await r.next("connected")).transport, "sse");
    await r.next("subscribed", (e) => e.topic === "a");
    assert.deepEqual(await r.client.publish("a", { n: 1 }), { topic: "a", seq: 1 });
    await r.next("message", (e) => e.topic === "a" && e.seq === 1);
    await assert.rejects(r.client.publish("bad topic", 1), (e) => e.code === "invalid_topic" && !e.maybeSent);
    await assert.rejects(r.client.ping(), (e) => e.code === "unsupported");

    // A second topic reopens the stream from the positions held: "a" is neither re-announced
    // nor replayed.
    r.client.subscribe("b");
    await r.next("subscribed", (e) => e.topic === "b");
    await server.publish("a", { n: 2 });
    await server.publish("b", { n: 1 });
    await until(() => r.seqs("a").length === 2 && r.seqs("b").length === 1, "a 2 and b 1");
    assert.equal(r.events.filter((e) => e.name === "subscribed" && e.topic === "a").length, 1);

    await r.client.unsubscribe("a");
    await server.publish("a", { n: 3 });
    await server.publish("b", { n: 2 });
    await r.next("message", (e) => e.topic === "b" && e.seq === 2);
    assert.deepEqual(r.seqs("a"), [1, 2]);

    await server.restart();
    const again = await r.next("subscribed", (e) => e.topic === "b" && e.resumed);
    assert.deepEqual([again.recovered, again.seq], [false, 0]);
    await server.publish("b", { n: 3 });
    await r.next("message", (e) => e.topic === "b" && e.seq === 1);
    // HTTP publishes made at once go one at a time, numbered in call order.
    const acks = await Promise.all([2, 3, 4, 5, 6].map((n) => r.client.publish("b", { n })));
    assert.deepEqual(
      acks.map((ack) => ack.seq),
      [2, 3, 4, 5, 6],
    );
    await until(() => r.seqs("b").includes(6), "b 6");
    assert.deepEqual(
      r.events.filter((e) => e.name === "message" && e.topic === "b").slice(-6).map((e) => e.data.n),
      [3, 2, 3, 4, 5, 6],
    );
    checkOnceInOrder(r.events, "b");
    assert.ok(r.events.some((e) => e.name === "disconnected" && e.willRetry));
    assert.ok(r.events.filter((e) => e.name === "connected").every((e) => e.transport === "sse"));
  } finally {
    r.client.close();
    await server.stop();
  }
});

/**
 * The `ws` WebSocket behind a gate: `pass`, `refuse` (a port nobody listens on: the handshake
 * fails) or `kill` (opened, then dropped before anything is read). `cut()` drops the open ones.
 */
async function gated() {
  const dead = await freePort();
  const gate = { mode: "pass", opened: 0, sockets: new Set() };
  gate.cut = () => {
    for (const socket of gate.sockets) socket.terminate();
  };
  gate.WebSocket = class extends WebSocket {
    constructor(url, protocols, options) {
      super(gate.mode === "refuse" ? url.replace(/:\d+\//, `:${dead}/`) : url, protocols, options);
      gate.sockets.add(this);
      this.on("close", () => gate.sockets.delete(this));
      if (gate.mode === "kill") {
        this.once("open", () => {
          gate.opened++;
          this.terminate();
        });
      }
    }
  };
  return gate;
}

test("refused handshakes: falls back to SSE at once, and a probe brings it back to WebSocket", async () => {
  const server = await Clarion.start();
  const gate = await gated();
  gate.mode = "refuse";
  const r = recorded(server.url(), { WebSocket: gate.WebSocket, websocketRetry: 100 });
  try {
    r.client.subscribe("t");
    const first = await r.next("connected");
    assert.equal(first.transport, "sse");
    // One refused handshake before it, no more: no WebSocket worked for this client yet.
    assert.deepEqual(
      r.events.slice(0, 1).map((e) => [e.name, e.code]),
      [["disconnected", 1006]],
    );
    await r.next("subscribed");
    await server.publish("t", 1);
    await server.publish("t", 2);
    await until(() => r.seqs("t").length === 2, "two messages over SSE");

    gate.mode = "pass";
    const back = await r.next("connected", (e) => e.transport === "websocket");
    const at = r.events.findIndex((e) => e === back || (e.name === "connected" && e.transport === "websocket"));
    const switched = r.events.slice(0, at).findLast((e) => e.name === "disconnected");
    assert.deepEqual([switched.code, switched.retryIn], [1000, 0]);
    const resumed = await r.next("subscribed", (e) => e.resumed);
    assert.equal(resumed.recovered, true);
    await server.publish("t", 3);
    await until(() => r.seqs("t").length === 3, "the third message over WebSocket");
    assert.deepEqual(r.seqs("t"), [1, 2, 3]);
    checkOnceInOrder(r.events, "t");
  } finally {
    r.client.close();
    await server.stop();
  }
});

test("after WebSocket worked: three deaths before the first message in a row, then SSE", async () => {
  const server = await Clarion.start();
  const gate = await gated();
  const r = recorded(server.url(), { WebSocket: gate.WebSocket, websocketRetry: 0 });
  try {
    r.client.subscribe("t");
    assert.equal((await r.next("connected")).transport, "websocket");
    await r.next("subscribed");
    await server.publish("t", 1);
    await until(() => r.seqs("t").length === 1, "one message over WebSocket");

    gate.mode = "kill";
    gate.cut();
    const sse = await r.next("connected", (e) => e.transport === "sse");
    assert.equal(gate.opened, 3, "three WebSockets opened and died before SSE");
    const since = r.events.indexOf(r.events.find((e) => e.name === "connected" && e.transport === "sse"));
    assert.equal(r.events.slice(0, since).filter((e) => e.name === "disconnected").length, 4);
    assert.ok(sse);
    const resumed = await r.next("subscribed", (e) => e.resumed);
    assert.equal(resumed.recovered, true);
    await server.publish("t", 2);
    await until(() => r.seqs("t").length === 2, "the second message over SSE");
    checkOnceInOrder(r.events, "t");
  } finally {
    r.client.close();
    await server.stop();
  }
});

test('transports ["websocket"] never falls back', async () => {
  const server = await Clarion.start();
  const gate = await gated();
  gate.mode = "refuse";
  const r = recorded(server.url(), { WebSocket: gate.WebSocket, transports: ["websocket"] });
  try {
    r.client.subscribe("t");
    await until(() => r.events.filter((e) => e.name === "disconnected").length >= 3, "three refused attempts");
    assert.equal(r.client.transport, "websocket");
    gate.mode = "pass";
    assert.equal((await r.next("connected")).transport, "websocket");
  } finally {
    r.client.close();
    await server.stop();
  }
});

test("with the server away, attempts take turns: WebSocket, SSE, WebSocket, SSE", async () => {
  const port = await freePort(); // nothing listens: every attempt of either kind is refused
  const r = recorded(`ws://127.0.0.1:${port}/ws`);
  try {
    r.client.subscribe("t");
    await until(() => r.events.filter((e) => e.name === "disconnected").length >= 4, "four attempts");
    assert.deepEqual(
      r.events.slice(0, 4).map((e) => [e.name, e.transport]),
      [
        ["disconnected", "websocket"],
        ["disconnected", "sse"],
        ["disconnected", "websocket"],
        ["disconnected", "sse"],
      ],
    );
    // The server comes up: whichever attempt comes first gets through.
    const server = await Clarion.start([], { port });
    try {
      await r.next("subscribed");
    } finally {
      await server.stop();
    }
  } finally {
    r.client.close();
  }
});
