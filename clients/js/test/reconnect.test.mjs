// Reconnection against the real server: a restart (new epoch, recovered:false), connections
// cut mid-stream by a proxy while a publisher runs (every seq once, in order), and a stalled
// connection found dead by the heartbeat watch.

import assert from "node:assert/strict";
import { test } from "node:test";
import { Clarion, Proxy, checkOnceInOrder, recorded, until } from "./helpers.mjs";

test("a server restart: disconnected with willRetry, then resumed:true recovered:false on the new epoch", async () => {
  const server = await Clarion.start();
  const { client, events, next, seqs } = recorded(server.url(), { backoff: { min: 100, max: 400 } });
  try {
    client.subscribe("news");
    const first = await next("subscribed");
    for (let i = 0; i < 3; i++) await server.publish("news", { i });
    await until(() => seqs("news").length === 3, "three messages");

    await server.restart();
    const down = await next("disconnected");
    assert.equal(down.code, 1001, "the server drains with 1001");
    assert.equal(down.willRetry, true);
    assert.ok(down.retryIn >= 0 && down.retryIn <= 100, `retryIn ${down.retryIn} within cap(1)`);

    const again = await next("subscribed", (e) => e.resumed);
    assert.equal(again.recovered, false, "a new epoch cannot be recovered");
    assert.notEqual(again.epoch, first.epoch);
    assert.equal(again.seq, 0);
    await server.publish("news", { after: true });
    await until(() => seqs("news").length === 4, "the message after the restart");
    assert.deepEqual(seqs("news"), [1, 2, 3, 1]);
    const names = events.map((e) => e.name);
    assert.deepEqual(names.slice(0, 2), ["connected", "subscribed"]);
    const reconnected = names.indexOf("connected", 1);
    assert.ok(names.indexOf("disconnected") < reconnected, "connected again after disconnected");
    assert.ok(reconnected < names.lastIndexOf("subscribed"), "connected comes before subscribed");
  } finally {
    client.close();
    await server.stop();
  }
});

test("cut mid-stream, repeatedly, while a publisher runs: every seq once, in order, recovered each time", async () => {
  const server = await Clarion.start(["--history-size", "10000"]);
  const proxy = await Proxy.start(server.port);
  // The publisher goes straight to the server; the subscriber through the proxy.
  const publisher = recorded(server.url());
  const subscriber = recorded(proxy.url(), { backoff: { min: 20, max: 200 } });
  try {
    subscriber.client.subscribe("stream");
    subscriber.client.subscribe("quiet");
    await subscriber.next("subscribed", (e) => e.topic === "quiet");
    let published = 0;
    let running = true;
    const publishing = (async () => {
      while (running && published < 5000) {
        await publisher.client.publish("stream", { n: published + 1 });
        published++;
      }
    })();
    const cuts = 6;
    for (let cut = 0; cut < cuts; cut++) {
      const before = subscriber.seqs("stream").length;
      await until(() => subscriber.seqs("stream").length > before + 20, "deliveries between cuts");
      proxy.cut();
      await subscriber.next("subscribed", (e) => e.topic === "stream" && e.resumed, subscriber.events.length);
    }
    running = false;
    await publishing;
    await until(() => subscriber.seqs("stream").length === published, `all ${published} messages`);
    const seqs = subscriber.seqs("stream");
    assert.deepEqual(
      seqs,
      Array.from({ length: published }, (_, i) => i + 1),
      "each seq once, in order, no gap",
    );
    assert.deepEqual(
      subscriber.events.filter((e) => e.name === "message" && e.topic === "stream").map((e) => e.data.n),
      seqs,
      "the data matches its seq",
    );
    const resumes = subscriber.events.filter((e) => e.name === "subscribed" && e.resumed);
    assert.ok(resumes.length >= cuts * 2, "both topics resumed after every cut");
    assert.ok(resumes.every((e) => e.recovered), "history covered every outage");
    const downs = subscriber.events.filter((e) => e.name === "disconnected");
    assert.equal(downs.length, cuts);
    assert.ok(downs.every((e) => e.code === 1006 && e.willRetry));
    checkOnceInOrder(subscriber.events, "stream");
  } finally {
    publisher.client.close();
    subscriber.client.close();
    await proxy.close();
    await server.stop();
  }
});

test("a stalled connection (not closed) is abandoned by the heartbeat watch with 4000, then resumed", async () => {
  const server = await Clarion.start(["--heartbeat-min", "1s"]);
  const proxy = await Proxy.start(server.port);
  const { client, next, seqs } = recorded(proxy.url(), { heartbeat: 1, backoff: { min: 50, max: 50 } });
  try {
    client.subscribe("beat");
    const connected = await next("connected");
    assert.equal(connected.heartbeat, 1);
    await next("subscribed");
    await server.publish("beat", 1);
    await until(() => seqs("beat").length === 1, "the first message");

    const stalledAt = Date.now();
    proxy.stall();
    await server.publish("beat", 2); // lost in the stalled connection, recovered by the resume
    const down = await next("disconnected");
    const silentFor = Date.now() - stalledAt;
    assert.deepEqual(
      { code: down.code, reason: down.reason, willRetry: down.willRetry },
      { code: 4000, reason: "heartbeat timeout", willRetry: true },
    );
    // Within 2 × heartbeat of the last thing heard; the bound is generous for a loaded machine.
    assert.ok(silentFor < 20_000, `abandoned after ${silentFor} ms`);

    const resumed = await next("subscribed", (e) => e.resumed);
    assert.equal(resumed.recovered, true);
    await until(() => seqs("beat").length === 2, "the message sent into the stalled connection");
    assert.deepEqual(seqs("beat"), [1, 2]);
  } finally {
    client.close();
    await proxy.close();
    await server.stop();
  }
});
