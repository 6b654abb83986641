// examples/ticker (the README's example page): it serves the page and the built client on the
// push server's port, publishes ticks, and the client (from its /client/ route) receives them.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { test } from "node:test";
import { cargoBuilt, freePort, recorded, until } from "./helpers.mjs";

test("the ticker example serves the page and the client, and publishes ticks", async () => {
  const port = await freePort();
  const ticker = spawn(cargoBuilt("examples/ticker", ["--example", "ticker"]), [`127.0.0.1:${port}`], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise((resolve) => ticker.on("exit", resolve));
  let output = "";
  ticker.stdout.on("data", (chunk) => (output += chunk));
  ticker.stderr.on("data", (chunk) => (output += chunk));
  const { client, seqs, events } = recorded(`ws://127.0.0.1:${port}/ws`);
  try {
    await until(() => output.includes("ticker on"), `the ticker starts: ${output}`);
    const page = await fetch(`http://127.0.0.1:${port}/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /import \{ connect \} from "\/client\/index.js"/);
    for (const module of ["index.js", "client.js", "transport.js", "backoff.js", "types.js"]) {
      const response = await fetch(`http://127.0.0.1:${port}/client/${module}`);
      assert.equal(response.status, 200, module);
      assert.equal(response.headers.get("content-type"), "text/javascript");
    }
    assert.equal((await fetch(`http://127.0.0.1:${port}/client/missing.js`)).status, 404);
    assert.equal(await (await fetch(`http://127.0.0.1:${port}/healthz`)).text(), "ok\n");

    client.subscribe("ticker");
    await until(() => seqs("ticker").length >= 2, "two ticks");
    const [first, second] = events.filter((e) => e.name === "message");
    assert.equal(second.seq, first.seq + 1);
    assert.equal(first.data.symbol, "CLR");
    assert.equal(typeof first.data.price, "number");
  } finally {
    client.close();
    ticker.kill("SIGKILL");
    await exited;
  }
});
