// Cluster mode: two nodes on a real Redis. Redis goes down, both nodes publish (each numbers
// its own publishes provisionally), Redis comes back: the `reset`s bring each client, applying
// them as docs/clients.md section 7.5 says, to exactly Redis's sequence.

import assert from "node:assert/strict";
import { test } from "node:test";
import { Clarion, Redis, recorded, until } from "./helpers.mjs";

/** An application's log of `topic`: deliveries appended, a `reset` truncating above its seq. */
function applicationLog(record, topic) {
  const log = [];
  for (const event of record.events) {
    if (event.topic !== topic) continue;
    if (event.name === "message") log.push([event.seq, event.data]);
    if (event.name === "reset") log.splice(0, log.length, ...log.filter(([seq]) => seq <= event.seq));
  }
  return log;
}

test("cluster resets: each client's log equals Redis's sequence", async () => {
  const redis = await Redis.start({ persistent: true });
  const nodes = [];
  const clients = [];
  try {
    for (let i = 0; i < 2; i++) nodes.push(await Clarion.start(["--redis", redis.url()]));
    for (const node of nodes) await until(async () => (await node.get("/healthz")).includes("cluster: up"), "cluster up");
    const [a, b] = nodes;
    const onA = recorded(a.url());
    const onB = recorded(b.url());
    clients.push(onA, onB);
    onA.client.subscribe("c");
    onB.client.subscribe("c");
    const ack = await onA.next("subscribed");
    await onB.next("subscribed");
    for (const node of nodes) {
      await until(async () => JSON.parse(await node.get("/topics/c")).subscribers === 2, "both subscribers seen");
    }

    await redis.kill();
    for (const node of nodes) await until(async () => (await node.get("/healthz")).includes("cluster: down"), "cluster down");
    // Both nodes number their own publishes 1, 2, …: at most one of them keeps its numbers.
    for (const name of ["a1", "a2"]) await a.publish("c", name);
    for (const name of ["b1", "b2", "b3"]) await b.publish("c", name);
    await until(() => onA.seqs("c").length === 2 && onB.seqs("c").length === 3, "local deliveries");
    assert.deepEqual(applicationLog(onA, "c").map(([, d]) => d), ["a1", "a2"]);
    assert.deepEqual(applicationLog(onB, "c").map(([, d]) => d), ["b1", "b2", "b3"]);

    await redis.restart();
    for (const node of nodes) {
      await until(async () => {
        const stats = JSON.parse(await node.get("/stats"));
        return (await node.get("/healthz")).includes("cluster: up") && stats.cluster.buffered === 0;
      }, "cluster up, buffer flushed");
    }
    // Redis's order, as a client resuming from the start sees it.
    const reader = recorded(a.url());
    clients.push(reader);
    reader.client.subscribe("c", { since: 0, epoch: ack.epoch });
    const replay = await reader.next("subscribed");
    assert.equal(replay.recovered, true);
    await until(() => reader.seqs("c").length === 5, "Redis's five messages");
    const order = applicationLog(reader, "c");
    assert.deepEqual(
      order.map(([seq]) => seq),
      [1, 2, 3, 4, 5],
    );
    assert.deepEqual(order.map(([, d]) => d).sort(), ["a1", "a2", "b1", "b2", "b3"]);

    for (const record of [onA, onB]) {
      await until(
        () => JSON.stringify(applicationLog(record, "c")) === JSON.stringify(order),
        "the application's log equals Redis's sequence",
      );
    }
    const resets = [onA, onB].flatMap((r) => r.events.filter((e) => e.name === "reset"));
    assert.ok(resets.length >= 1, "both nodes cannot keep seq 1");
    assert.ok(resets.every((e) => !e.epochChanged), "Redis kept its data (AOF): same epoch");
    // Once in order within each reset-delimited run (section 3, promises 3 and 6).
    for (const record of [onA, onB]) {
      let last = 0;
      for (const event of record.events) {
        if (event.name === "reset") last = event.seq;
        if (event.name !== "message") continue;
        assert.equal(event.seq, last + 1, JSON.stringify(record.events));
        last = event.seq;
      }
    }
  } finally {
    for (const record of clients) record.client.close();
    for (const node of nodes) await node.stop();
    await redis.stop();
  }
});
