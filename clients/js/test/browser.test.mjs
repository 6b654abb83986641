// The same package in headless Chromium, with the browser's WebSocket (token in the query): a
// page subscribes, the server restarts under it, and the page's sequence is checked.

import assert from "node:assert/strict";
import { test } from "node:test";
import { chromium, pageServer } from "./browser/harness.mjs";
import { Clarion, until } from "./helpers.mjs";

const SECRET = "a secret of at least thirty-two bytes, for the browser";

test("in headless Chromium: subscribe, the server restarts under the page, the sequence is checked", async () => {
  const server = await Clarion.start(["--auth", "jwt"], { env: { CLARION_JWT_SECRET: SECRET } });
  const page = await pageServer(SECRET);
  const ws = encodeURIComponent(server.url());
  const stop = chromium(`http://127.0.0.1:${page.port}/page.html?ws=${ws}&transports=websocket`);
  const of = (name) => page.reports.filter((r) => r.name === name);
  try {
    await until(() => of("subscribed").length === 1, "the page subscribed");
    const first = of("subscribed")[0];
    assert.equal(first.resumed, false);
    for (let i = 1; i <= 3; i++) await server.publish("ticker", { price: 100 + i });
    await until(() => of("message").length === 3, "three messages on the page");

    await server.restart();
    await until(() => of("subscribed").length === 2, "the page subscribed again");
    for (let i = 1; i <= 3; i++) await server.publish("ticker", { price: 200 + i });
    await until(() => of("message").length === 6, "three more messages on the page");

    // Attempts made while the server was down each add a disconnected (1006): count one.
    const names = page.reports
      .map((r) => r.name)
      .filter((name, i, all) => name !== "disconnected" || all[i - 1] !== "disconnected");
    assert.deepEqual(names, [
      "connected",
      "subscribed",
      "message",
      "message",
      "message",
      "disconnected",
      "connected",
      "subscribed",
      "message",
      "message",
      "message",
    ]);
    const [down, ...attempts] = of("disconnected");
    assert.deepEqual({ code: down.code, willRetry: down.willRetry }, { code: 1001, willRetry: true });
    assert.ok(attempts.every((a) => a.code === 1006 && a.willRetry), JSON.stringify(attempts));
    const again = of("subscribed")[1];
    assert.deepEqual(
      { resumed: again.resumed, recovered: again.recovered, seq: again.seq },
      { resumed: true, recovered: false, seq: 0 },
    );
    assert.notEqual(again.epoch, first.epoch, "a new epoch after the restart");
    assert.deepEqual(
      of("message").map((m) => [m.seq, m.data.price]),
      [
        [1, 101],
        [2, 102],
        [3, 103],
        [1, 201],
        [2, 202],
        [3, 203],
      ],
    );
  } finally {
    await stop();
    await page.close();
    await server.stop();
  }
});
