// A subscriber that falls behind (the proxy stops reading for it): under `slow_consumer =
// "drop"` it sees a gap, which the client repairs (section 7.4); under "close" the server
// closes it with 1013 and the client comes back and resumes. Either way: every seq once, in
// order.

import assert from "node:assert/strict";
import { test } from "node:test";
import { Clarion, Proxy, checkOnceInOrder, recorded, until } from "./helpers.mjs";

const FILLER = "x".repeat(16 << 10);

/**
 * A server with `policy`, a subscriber behind a proxy that is stalled until the server gave up
 * on it (a drop or a slow-consumer close counted), then unstalled; the subscriber's record and
 * how many messages were published.
 */
async function fallBehind(policy, counter) {
  const server = await Clarion.start([
    "--slow-consumer",
    policy,
    "--max-queued-bytes",
    "65536",
    "--history-size",
    "5000",
    "--history-max-bytes",
    "200000000",
  ]);
  const proxy = await Proxy.start(server.port);
  const publisher = recorded(server.url());
  const subscriber = recorded(proxy.url(), { backoff: { min: 20, max: 100 } });
  subscriber.client.subscribe("firehose");
  await subscriber.next("subscribed");
  let published = 0;
  const publish = async () => {
    await publisher.client.publish("firehose", { n: ++published, filler: FILLER });
  };
  await publish();
  await until(() => subscriber.seqs("firehose").length === 1, "the first message");
  proxy.stall();
  // Kernel buffers hide a stalled reader for a while: publish until the server gives up on it.
  while ((await server.stat(counter)) === 0) {
    assert.ok(published < 3000, "the server never gave up on the stalled subscriber");
    for (let i = 0; i < 20; i++) await publish();
  }
  proxy.unstall();
  // Until one gets through (right after the unstall the server's queue may still be full): a
  // delivery after the dropped ones shows the gap.
  await until(async () => {
    if (subscriber.seqs("firehose").at(-1) === published) return true;
    await publish();
    return false;
  }, "a delivery after the unstall");
  await until(() => subscriber.seqs("firehose").length === published, `all ${published} messages`);
  const done = async () => {
    publisher.client.close();
    subscriber.client.close();
    await proxy.close();
    await server.stop();
  };
  return { subscriber, published, done };
}

test('a gap under slow_consumer = "drop" is repaired: every seq once, in order', async () => {
  const { subscriber, published, done } = await fallBehind("drop", "drops");
  try {
    assert.deepEqual(
      subscriber.seqs("firehose"),
      Array.from({ length: published }, (_, i) => i + 1),
    );
    const resumes = subscriber.events.filter((e) => e.name === "subscribed" && e.resumed);
    assert.ok(resumes.length >= 1, "repaired by a resume");
    assert.ok(resumes.every((e) => e.recovered));
    assert.deepEqual(
      subscriber.events.filter((e) => e.name === "disconnected"),
      [],
      "repaired on the same connection",
    );
    checkOnceInOrder(subscriber.events, "firehose");
  } finally {
    await done();
  }
});

test('a slow consumer under "close" gets 1013, reconnects and resumes without a gap', async () => {
  const { subscriber, published, done } = await fallBehind("close", "slow_consumer_closes");
  try {
    assert.deepEqual(
      subscriber.seqs("firehose"),
      Array.from({ length: published }, (_, i) => i + 1),
    );
    const down = subscriber.events.find((e) => e.name === "disconnected");
    assert.deepEqual(
      { code: down.code, reason: down.reason, willRetry: down.willRetry },
      { code: 1013, reason: "slow consumer", willRetry: true },
    );
    const resumed = subscriber.events.find((e) => e.name === "subscribed" && e.resumed);
    assert.equal(resumed.recovered, true);
  } finally {
    await done();
  }
});
