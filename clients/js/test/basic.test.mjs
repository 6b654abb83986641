// The API against the real server: connect, subscribe, publish and receive, unsubscribe,
// publishes rejected by the server, publishes while disconnected (queued, bounded, in flight
// at a cut), ping, close, and what throws.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { ClarionError, connect } from "../dist/index.js";
import { Clarion, Proxy, jwt, nowSeconds, recorded, sleep, until } from "./helpers.mjs";

let server;
before(async () => {
  server = await Clarion.start();
});
after(async () => {
  await server.stop();
});

test("connect, subscribe, publish and receive, unsubscribe", async () => {
  const { client, events, next, seqs } = recorded(server.url(), { heartbeat: 5 });
  assert.equal(client.state, "connecting");
  const sub = client.subscribe("basic.a");
  assert.equal(client.subscribe("basic.a"), sub, "one subscription per topic");
  assert.equal(sub.state, "subscribing");
  const connected = await next("connected");
  assert.equal(connected.heartbeat, 5);
  assert.equal(connected.expiresIn, undefined, "no tokens on this server");
  const subscribed = await next("subscribed");
  assert.deepEqual(
    { topic: subscribed.topic, resumed: subscribed.resumed, recovered: subscribed.recovered, seq: subscribed.seq },
    { topic: "basic.a", resumed: false, recovered: false, seq: 0 },
  );
  assert.equal(sub.state, "subscribed");
  assert.equal(client.state, "connected");

  const values = [{ text: "hi" }, "plain text", 42, [1, 2], null, true];
  for (const [i, data] of values.entries()) {
    assert.deepEqual(await client.publish("basic.a", data), { topic: "basic.a", seq: i + 1 });
  }
  await until(() => seqs("basic.a").length === values.length, "every delivery");
  const messages = events.filter((e) => e.name === "message");
  assert.deepEqual(
    messages.map((m) => m.data),
    values,
    "each JSON value comes back as it was published",
  );
  assert.deepEqual(sub.position, { seq: values.length, epoch: subscribed.epoch });
  assert.ok((await client.ping()) >= 0);

  await sub.unsubscribe();
  assert.equal(sub.state, "unsubscribed");
  await server.publish("basic.a", { after: "unsubscribe" });
  await client.ping(); // the delivery, had there been one, came before this answer
  assert.equal(seqs("basic.a").length, values.length, "nothing after unsubscribe");

  // A new subscription resumes from a stored position.
  const again = client.subscribe("basic.a", { since: 2, epoch: subscribed.epoch });
  const resumed = await next("subscribed", (e) => e.resumed);
  assert.equal(resumed.recovered, true);
  await until(() => again.position?.seq === values.length + 1, "the replay");
  assert.deepEqual(seqs("basic.a").slice(values.length), [3, 4, 5, 6, 7]);

  client.close();
  assert.equal(client.state, "closed");
  const last = events.at(-1);
  assert.deepEqual(last, { name: "disconnected", transport: "websocket", code: 1000, reason: "closed by the client", willRetry: false });
  await assert.rejects(client.publish("basic.a", 1), { code: "closed" });
  await assert.rejects(client.ping(), { code: "closed" });
});

test("what throws at once", () => {
  assert.throws(() => connect("http://127.0.0.1/ws"), TypeError);
  assert.throws(() => connect("not a url"), TypeError);
  const client = connect(server.url(), { WebSocket });
  try {
    assert.throws(() => client.publish("t", 10n), TypeError, "BigInt");
    const cycle = {};
    cycle.self = cycle;
    assert.throws(() => client.publish("t", cycle), TypeError, "a cycle");
    assert.throws(() => client.publish("t", new Uint8Array(2)), TypeError, "binary");
    assert.throws(() => client.publish("t", undefined), TypeError, "undefined");
    assert.throws(() => client.subscribe("t", { since: 1 }), TypeError, "since without epoch");
  } finally {
    client.close();
  }
});

test("publish refused by the server carries its code; a refused subscribe fails", async () => {
  const secret = "a secret of at least thirty-two bytes, for tests";
  const guarded = await Clarion.start(["--auth", "jwt"], { env: { CLARION_JWT_SECRET: secret } });
  try {
    const token = jwt({ exp: nowSeconds() + 600, subscribe: ["room.*"], publish: ["room.*"] }, secret);
    const { client, next } = recorded(guarded.url(), { token });
    const room = client.subscribe("room.1");
    const vip = client.subscribe("vip.1");
    const error = await next("error");
    assert.deepEqual({ code: error.code, topic: error.topic }, { code: "forbidden", topic: "vip.1" });
    assert.equal(vip.state, "failed");
    await next("subscribed");
    assert.equal(room.state, "subscribed");
    const refused = await client.publish("news", 1).then(
      () => assert.fail("published"),
      (e) => e,
    );
    assert.ok(refused instanceof ClarionError);
    assert.equal(refused.code, "forbidden");
    assert.equal(refused.maybeSent, false);
    assert.deepEqual(await client.publish("room.1", 1), { topic: "room.1", seq: 1 });
    client.close();
  } finally {
    await guarded.stop();
  }
});

test("publishes while disconnected: queued and sent after the resume, bounded; in flight at a cut: maybeSent", async () => {
  const proxy = await Proxy.start(server.port);
  try {
    const { client, next, seqs } = recorded(proxy.url(), {
      maxQueued: 3,
      backoff: { min: 300, max: 300 },
    });
    client.subscribe("basic.q");
    await next("subscribed");

    // In flight: sent into a stalled connection, then the connection is cut.
    proxy.stall();
    const inFlight = client.publish("basic.q", "in flight");
    await sleep(50);
    proxy.cut();
    const lost = await inFlight.then(
      () => assert.fail("acked"),
      (e) => e,
    );
    assert.deepEqual({ code: lost.code, maybeSent: lost.maybeSent }, { code: "disconnected", maybeSent: true });

    // Disconnected (waiting 300 ms to retry): three are queued, the fourth is refused.
    assert.equal(client.state, "disconnected");
    const queued = [1, 2, 3].map((n) => client.publish("basic.q", { n }));
    await assert.rejects(client.publish("basic.q", { n: 4 }), { code: "queue_full", maybeSent: false });
    const acks = await Promise.all(queued);
    // The stalled proxy never passed the one in flight on: the server numbers these from 1.
    assert.deepEqual(
      acks.map((a) => a.seq),
      [1, 2, 3],
      "sent in order on the next connection",
    );
    await until(() => seqs("basic.q").length === 3, "the deliveries");
    assert.deepEqual(seqs("basic.q"), [1, 2, 3]);
    client.close();

    // maxQueued 0: refused at once.
    const strict = connect(proxy.url(), { WebSocket, maxQueued: 0 });
    await assert.rejects(strict.publish("basic.q", 1), { code: "disconnected", maybeSent: false });
    strict.close();
  } finally {
    await proxy.close();
  }
});

test("publishTimeout rejects a publish unanswered (maybeSent) or still queued (removed from the queue)", async () => {
  const proxy = await Proxy.start(server.port);
  const { client, next } = recorded(proxy.url(), {
    publishTimeout: 200,
    maxQueued: 1,
    backoff: { min: 60_000, max: 60_000 },
  });
  try {
    await next("connected");
    proxy.stall();
    await assert.rejects(client.publish("basic.t", 1), { code: "timeout", maybeSent: true });
    // Full jitter may draw a retry within the timeout: its attempts must not get through.
    proxy.refuse();
    proxy.cut();
    await next("disconnected");
    await assert.rejects(client.publish("basic.t", 2), { code: "timeout", maybeSent: false });
    // The queue (of one) is free again.
    const third = client.publish("basic.t", 3);
    await assert.rejects(client.publish("basic.t", 4), { code: "queue_full" });
    client.close();
    await assert.rejects(third, { code: "closed", maybeSent: false });
  } finally {
    client.close();
    await proxy.close();
  }
});

test("binary payloads arrive as Uint8Array", async () => {
  const { client, events, next } = recorded(server.url());
  try {
    client.subscribe("basic.bin");
    await next("subscribed");
    const response = await fetch(`http://127.0.0.1:${server.port}/publish/basic.bin`, {
      method: "POST",
      headers: { "content-type": "application/octet-stream" },
      body: new Uint8Array([0, 1, 254, 255]),
    });
    assert.equal(response.status, 202);
    const message = await next("message");
    assert.ok(message.data instanceof Uint8Array);
    assert.deepEqual([...message.data], [0, 1, 254, 255]);
    assert.equal(events.filter((e) => e.name === "error").length, 0);
  } finally {
    client.close();
  }
});

test("which WebSocket: the ws package when the runtime has none, else the global one (token in the query)", async () => {
  // Node 20 has no global WebSocket: without the option the client loads `ws` itself.
  assert.equal(globalThis.WebSocket, undefined);
  const client = connect(server.url());
  const connected = new Promise((resolve) => client.on("connected", resolve));
  await connected;
  client.close();

  // With one (Node 22, or Node 20 with --experimental-websocket) it is used, as in a browser.
  const secret = "a secret of at least thirty-two bytes, for the global";
  const guarded = await Clarion.start(["--auth", "jwt"], { env: { CLARION_JWT_SECRET: secret } });
  try {
    const token = jwt({ exp: nowSeconds() + 600, subscribe: ["g"], publish: ["g"] }, secret);
    const script = `
      import { connect } from ${JSON.stringify(new URL("../dist/index.js", import.meta.url).href)};
      if (typeof WebSocket !== "function") throw new Error("no global WebSocket");
      const client = connect(${JSON.stringify(guarded.url())}, { token: ${JSON.stringify(token)} });
      client.on("disconnected", (e) => { console.log(JSON.stringify(e)); process.exit(1); });
      client.on("message", (m) => { console.log(JSON.stringify(m)); process.exit(0); });
      client.on("subscribed", () => client.publish("g", { via: "global" }));
      client.subscribe("g");
    `;
    const flags = process.versions.node.startsWith("20.") ? ["--experimental-websocket", "--no-warnings"] : [];
    const output = await new Promise((resolve, reject) =>
      execFile(process.execPath, [...flags, "--input-type=module", "-e", script], { timeout: 30_000 }, (error, stdout) =>
        error ? reject(new Error(`${error.message}: ${stdout}`)) : resolve(stdout),
      ),
    );
    assert.deepEqual(JSON.parse(output), { topic: "g", seq: 1, data: { via: "global" } });
  } finally {
    await guarded.stop();
  }
});
