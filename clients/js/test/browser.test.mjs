// The same package in headless Chromium, with the browser's WebSocket (token in the query): a
// page subscribes, the server restarts under it, and the page's sequence is checked.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { Clarion, jwt, nowSeconds, until } from "./helpers.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PACKAGE = path.resolve(HERE, "..");
const SECRET = "a secret of at least thirty-two bytes, for the browser";

/**
 * Serves the page, the built client under /dist/, a token at /token, and collects what the page
 * posts to /report.
 */
async function pageServer() {
  const reports = [];
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, "http://localhost");
    if (request.method === "POST" && url.pathname === "/report") {
      let body = "";
      request.on("data", (chunk) => (body += chunk));
      request.on("end", () => {
        reports.push(JSON.parse(body));
        reports.sort((x, y) => x.n - y.n);
        response.writeHead(204).end();
      });
      return;
    }
    if (url.pathname === "/token") {
      const token = jwt({ exp: nowSeconds() + 600, subscribe: ["ticker"] }, SECRET);
      response.writeHead(200, { "content-type": "text/plain" }).end(token);
      return;
    }
    const file =
      url.pathname === "/page.html"
        ? path.join(HERE, "browser", "page.html")
        : url.pathname.startsWith("/dist/") && !url.pathname.includes("..")
          ? path.join(PACKAGE, url.pathname)
          : undefined;
    if (!file || !fs.existsSync(file)) {
      response.writeHead(404).end();
      return;
    }
    const type = file.endsWith(".html") ? "text/html" : "text/javascript";
    response.writeHead(200, { "content-type": type }).end(fs.readFileSync(file));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const close = () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  };
  return { port: server.address().port, reports, close };
}

/** Headless Chromium on `url` with a fresh profile; ends it (by PID) and the profile. */
function chromium(url) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "clarion-js-chromium-"));
  const child = spawn(
    "chromium",
    [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      `--user-data-dir=${profile}`,
      url,
    ],
    { stdio: "ignore" },
  );
  const exited = new Promise((resolve) => child.on("exit", resolve));
  child.on("error", (error) => {
    throw new Error(`cannot run chromium (${error.message}): apt-get install chromium`);
  });
  return async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await exited;
    fs.rmSync(profile, { recursive: true, force: true });
  };
}

test("in headless Chromium: subscribe, the server restarts under the page, the sequence is checked", async () => {
  const server = await Clarion.start(["--auth", "jwt"], { env: { CLARION_JWT_SECRET: SECRET } });
  const page = await pageServer();
  const ws = encodeURIComponent(server.url());
  const stop = chromium(`http://127.0.0.1:${page.port}/page.html?ws=${ws}`);
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
