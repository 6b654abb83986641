// What the headless Chromium tests share: a server of the page (test/browser/page.html), the
// built client and tokens, which collects the page's reports; and Chromium itself, ended by PID.

import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { jwt, nowSeconds } from "../helpers.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PACKAGE = path.resolve(HERE, "../..");

/**
 * Serves the page, the built client under /dist/, a token at /token, and collects what the page
 * posts to /report.
 */
export async function pageServer(secret) {
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
      const token = jwt({ exp: nowSeconds() + 600, subscribe: ["ticker"] }, secret);
      response.writeHead(200, { "content-type": "text/plain" }).end(token);
      return;
    }
    const file =
      url.pathname === "/page.html"
        ? path.join(HERE, "page.html")
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

/**
 * Headless Chromium on `url` with a fresh profile, in a process group of its own; ends it (the
 * group, by the browser's PID: its helper processes too) and the profile.
 */
export function chromium(url) {
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
    { stdio: "ignore", detached: true },
  );
  // A browser that never started has no exit to wait for: its error ends the wait too.
  const exited = new Promise((resolve) => {
    child.on("exit", resolve);
    child.on("error", resolve);
  });
  child.on("error", (error) => {
    throw new Error(`cannot run chromium (${error.message}): apt-get install chromium`);
  });
  return async () => {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        child.kill("SIGKILL"); // the group is gone already
      }
    }
    await exited;
    // A helper process may still be writing the profile as it dies.
    fs.rmSync(profile, { recursive: true, force: true, maxRetries: 20, retryDelay: 50 });
  };
}
