// The fallback end to end, through a real proxy that breaks WebSockets: headless Chromium loads
// the page through nginx configured as a plain reverse proxy (nginx's defaults: `Upgrade` not
// forwarded, response buffering on) in front of a Clarion node; the client falls back to SSE,
// receives a published sequence, survives the node's restart on the same port with resume
// (cluster mode: seq, epoch and history live in Redis, and a second node takes publishes while
// the first is down), and the sequence has no gap and no duplicate. The same page through the
// WebSocket-capable config stays on WebSocket.

import assert from "node:assert/strict";
import { test } from "node:test";
import { chromium, pageServer } from "./browser/harness.mjs";
import { Clarion, Nginx, Redis, until } from "./helpers.mjs";

const SECRET = "a secret of at least thirty-two bytes, for the browser";

/** A cluster node on `port` (0: a free one), once it is linked to Redis. */
async function clusterNode(redis, port = 0) {
  const node = await Clarion.start(["--auth", "jwt", "--redis", redis.url()], {
    port,
    env: { CLARION_JWT_SECRET: SECRET },
  });
  await until(async () => (await node.get("/healthz")).includes("cluster: up"), "the node linked to Redis");
  return node;
}

test("in headless Chromium behind nginx: SSE when WebSockets cannot pass, resumed across a restart; WebSocket when they can", async () => {
  const redis = await Redis.start();
  const nodes = [];
  let page;
  let nginx;
  let stop = async () => {};
  try {
    const node = await clusterNode(redis);
    nodes.push(node);
    const other = await clusterNode(redis);
    nodes.push(other);
    page = await pageServer(SECRET);
    nginx = await Nginx.start(node.port, page.port);
    const of = (name) => page.reports.filter((r) => r.name === name);

    // Through the plain proxy: the handshake fails, the page falls back to SSE.
    const plain = `127.0.0.1:${nginx.plain}`;
    stop = chromium(`http://${plain}/page.html?ws=${encodeURIComponent(`ws://${plain}/ws`)}`);
    await until(() => of("subscribed").length === 1, `the page subscribed: ${nginx.log()}`);
    assert.deepEqual(
      page.reports.slice(0, 2).map((r) => [r.name, r.code ?? r.transport]),
      [
        ["disconnected", 1006],
        ["connected", "sse"],
      ],
    );
    for (let n = 1; n <= 3; n++) await node.publish("ticker", { n });
    await until(() => of("message").length === 3, "three messages over SSE");

    // The node restarts on the same port; meanwhile the other node takes two publishes.
    await node.stop();
    await other.publish("ticker", { n: 4 });
    await other.publish("ticker", { n: 5 });
    await node.spawn(node.port);
    await until(async () => (await node.get("/healthz")).includes("cluster: up"), "the node back on Redis");
    await until(() => of("subscribed").length === 2, "the page subscribed again");
    const again = of("subscribed")[1];
    assert.deepEqual([again.resumed, again.recovered], [true, true], JSON.stringify(again));
    await node.publish("ticker", { n: 6 });
    await until(() => of("message").length === 6, "six messages");

    const messages = of("message");
    assert.deepEqual(
      messages.map((m) => m.data.n),
      [1, 2, 3, 4, 5, 6],
    );
    const first = messages[0].seq;
    assert.deepEqual(
      messages.map((m) => m.seq),
      [0, 1, 2, 3, 4, 5].map((i) => first + i),
      "no gap, no duplicate",
    );
    assert.ok(of("connected").every((c) => c.transport === "sse"), JSON.stringify(of("connected")));
    assert.deepEqual(of("error"), []);
    await stop();

    // Through the WebSocket-capable config: WebSocket, and nothing else.
    page.reports.length = 0;
    const upgrading = `127.0.0.1:${nginx.upgrading}`;
    stop = chromium(`http://${upgrading}/page.html?ws=${encodeURIComponent(`ws://${upgrading}/ws`)}`);
    await until(() => of("subscribed").length === 1, "the page subscribed over WebSocket");
    await node.publish("ticker", { n: 7 });
    await until(() => of("message").length === 1, "a message over WebSocket");
    assert.deepEqual(
      page.reports.map((r) => [r.name, r.transport]),
      [
        ["connected", "websocket"],
        ["subscribed", undefined],
        ["message", undefined],
      ],
    );
  } finally {
    await stop();
    await nginx?.stop();
    await page?.close();
    for (const node of nodes) await node.stop();
    await redis.stop();
  }
});
