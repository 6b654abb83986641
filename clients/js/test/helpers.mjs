// What the end-to-end tests run against: the real `clarion` binary on a free port, a real
// redis-server, a TCP proxy that can cut or stall connections, JWTs, and waiting for events.
// Every process a test starts is ended by its PID when the test is done.

import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { connect } from "../dist/index.js";

export const ROOT = path.resolve(fileURLToPath(new URL(".", import.meta.url)), "../../..");

/** Longest wait for anything: a bound for what never comes, not a timing assertion. */
export const PATIENCE = 30_000;

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The `clarion` binary: $CLARION_BIN, else the newest of target/{debug,release}, else built. */
export function clarionBin() {
  return process.env.CLARION_BIN ?? cargoBuilt("clarion", ["--bin", "clarion"]);
}

/**
 * The newest of target/{debug,release}/`file` (a path under the profile's directory), else
 * built with `cargo build ARGS` (debug).
 */
export function cargoBuilt(file, args) {
  const target = process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target");
  const built = ["debug", "release"]
    .map((profile) => path.join(target, profile, file))
    .filter((candidate) => fs.existsSync(candidate))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  if (built.length > 0) return built[0];
  const cargo = spawnSync("cargo", ["build", ...args], { cwd: ROOT, stdio: "inherit" });
  if (cargo.status !== 0) throw new Error(`cargo build ${args.join(" ")} failed`);
  return path.join(target, "debug", file);
}

/** A free loopback port (closed again before it is returned). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * What these tests exercise beyond the server's production defaults (as the Rust end-to-end
 * tests set them, tests/common): publishing from clients, and no per-client rates (tests send
 * as fast as they can). A test's own `env` or flags win.
 */
const TEST_ENV = {
  CLARION_CLIENT_PUBLISH: "all",
  CLARION_MESSAGE_RATE: "0",
  CLARION_BYTE_RATE: "0",
};

/** A `clarion serve` process on 127.0.0.1. */
export class Clarion {
  /** Starts one: `args` are added to `serve`; `port` 0 picks a free one. */
  static async start(args = [], { port = 0, env = {} } = {}) {
    const node = new Clarion(args, env);
    await node.spawn(port);
    return node;
  }

  constructor(args, env) {
    this.args = args;
    this.env = env;
    this.log = [];
  }

  async spawn(port) {
    const io = process.env.CLARION_TEST_IO;
    // With tokens, clients publish as their grants allow (the default for auth = jwt).
    const publishing = this.args.includes("jwt") ? { CLARION_CLIENT_PUBLISH: "token" } : {};
    const env = { ...process.env, ...TEST_ENV, ...publishing, ...(io ? { CLARION_IO: io } : {}), ...this.env };
    delete env.CLARION_TEST_IO;
    const child = spawn(
      clarionBin(),
      // No admin listener (the default port would be shared by parallel servers); /stats on the
      // public port, where the tests read it.
      ["serve", "--listen", `127.0.0.1:${port}`, "--threads", "1", "--no-pin",
        "--admin-listen", "off", "--public-metrics", ...this.args],
      { env, stdio: ["ignore", "ignore", "pipe"] },
    );
    this.child = child;
    this.exited = new Promise((resolve) => child.on("exit", resolve));
    let buffered = "";
    const listening = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "listening on" in ${this.log.join("\n")}`)), PATIENCE);
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (chunk) => {
        buffered += chunk;
        let newline;
        while ((newline = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          this.log.push(line);
          const match = /listening on (\S+)/.exec(line);
          if (match) {
            clearTimeout(timer);
            resolve(match[1]);
          }
        }
      });
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`clarion exited (${code}): ${this.log.join("\n")}`));
      });
    });
    const addr = await listening;
    this.port = Number(addr.slice(addr.lastIndexOf(":") + 1));
  }

  /** `ws://127.0.0.1:<port><path>`. */
  url(pathname = "/ws") {
    return `ws://127.0.0.1:${this.port}${pathname}`;
  }

  /** Ends the process (SIGTERM: drain with 1001; SIGKILL: a crash) and waits for it. */
  async stop(signal = "SIGTERM") {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    await this.exited;
  }

  /** Stops it and starts it again on the same port (a new epoch). */
  async restart(signal = "SIGTERM") {
    await this.stop(signal);
    await this.spawn(this.port);
  }

  /** `POST /publish/<topic>` with a JSON body; the answer's JSON. */
  async publish(topic, data) {
    const response = await fetch(`http://127.0.0.1:${this.port}/publish/${topic}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(data),
    });
    if (response.status !== 202) throw new Error(`publish: ${response.status} ${await response.text()}`);
    return response.json();
  }

  /** `GET <path>` as text. */
  async get(pathname) {
    const response = await fetch(`http://127.0.0.1:${this.port}${pathname}`);
    return response.text();
  }

  /** A counter of `/stats`, summed over reactors. */
  async stat(name) {
    return JSON.parse(await this.get("/stats")).totals[name];
  }
}

/** A real redis-server on a free port, without persistence, or with `persistent` an AOF. */
export class Redis {
  static async start({ persistent = false } = {}) {
    const redis = new Redis(await freePort(), persistent);
    await redis.spawn();
    return redis;
  }

  constructor(port, persistent) {
    this.port = port;
    this.persistent = persistent;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "clarion-js-redis-"));
  }

  async spawn() {
    const child = spawn(
      "redis-server",
      ["--port", String(this.port), "--bind", "127.0.0.1", "--save", ""]
        .concat(["--appendonly", this.persistent ? "yes" : "no", "--appendfsync", "always"])
        .concat(["--dir", this.dir]),
      { stdio: "ignore" },
    );
    this.child = child;
    this.exited = new Promise((resolve) => child.on("exit", resolve));
    child.on("error", (error) => {
      throw new Error(`cannot run redis-server (${error.message}): apt-get install redis-server`);
    });
    await until(() => this.answers(), "redis-server answers PING");
  }

  answers() {
    return new Promise((resolve) => {
      const socket = net.connect(this.port, "127.0.0.1");
      let reply = "";
      socket.on("data", (data) => {
        reply += data;
        if (reply.includes("\r\n")) {
          socket.destroy();
          resolve(reply.startsWith("+PONG"));
        }
      });
      socket.on("error", () => resolve(false));
      socket.on("connect", () => socket.write("PING\r\n"));
    });
  }

  url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** SIGKILL: a crash, no goodbye to the clients. */
  async kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.exited;
  }

  async restart() {
    await this.kill();
    await this.spawn();
  }

  async stop() {
    await this.kill();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A TCP proxy in front of `port`: `cut()` drops every connection it carries, `stall()` stops
 * forwarding on them without closing (as a dead network does), new connections pass.
 */
export class Proxy {
  static async start(port) {
    const proxy = new Proxy(port);
    await new Promise((resolve) => proxy.server.listen(0, "127.0.0.1", resolve));
    proxy.port = proxy.server.address().port;
    return proxy;
  }

  constructor(port) {
    this.target = port;
    this.pairs = new Set();
    this.refusing = false;
    this.server = net.createServer((client) => {
      if (this.refusing) {
        client.destroy();
        return;
      }
      const upstream = net.connect(this.target, "127.0.0.1");
      const pair = { client, upstream, stalled: false };
      this.pairs.add(pair);
      forward(client, upstream);
      forward(upstream, client);
      const end = () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      for (const socket of [client, upstream]) {
        socket.on("close", end);
        socket.on("error", end);
      }
    });
  }

  url(pathname = "/ws") {
    return `ws://127.0.0.1:${this.port}${pathname}`;
  }

  /** Drops every connection it carries now (the client sees 1006). */
  cut() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  /** Closes every connection it accepts from now on at once (the client's attempts fail). */
  refuse() {
    this.refusing = true;
  }

  /** Stops forwarding on every connection it carries now, without closing them. */
  stall() {
    for (const pair of this.pairs) {
      pair.stalled = true;
      for (const socket of [pair.client, pair.upstream]) {
        socket.stalledByProxy = true;
        socket.pause();
      }
    }
  }

  /** Forwards again on the stalled connections. */
  unstall() {
    for (const pair of this.pairs) {
      if (!pair.stalled) continue;
      pair.stalled = false;
      for (const socket of [pair.client, pair.upstream]) {
        socket.stalledByProxy = false;
        socket.resume();
      }
    }
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

/** Copies `from` to `to`, pausing `from` while `to` is full. */
function forward(from, to) {
  from.on("data", (chunk) => {
    if (!to.write(chunk)) {
      from.pause();
      to.once("drain", () => {
        if (!from.stalledByProxy) from.resume();
      });
    }
  });
}

/** An HS256 JWT of `claims` signed with `secret`. */
export function jwt(claims, secret) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const signed = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(claims)}`;
  const signature = crypto.createHmac("sha256", secret).update(signed).digest("base64url");
  return `${signed}.${signature}`;
}

/** Seconds since the Unix epoch. */
export const nowSeconds = () => Math.floor(Date.now() / 1000);

/** Waits until `check()` (maybe async) is true, polling; fails after PATIENCE. */
export async function until(check, what, patience = PATIENCE) {
  const deadline = Date.now() + patience;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(20);
  }
}

/**
 * A client (`connect` with `ws` as its WebSocket, short backoff unless given) and a record of
 * everything it emitted, in order.
 */
export function recorded(url, options = {}) {
  const client = connect(url, {
    WebSocket,
    backoff: { min: 50, max: 500, ...options.backoff },
    ...options,
  });
  const events = [];
  for (const name of ["connected", "disconnected", "subscribed", "message", "reset", "error"]) {
    client.on(name, (event) => events.push({ name, ...event }));
  }
  const next = (name, predicate = () => true, after = 0) =>
    new Promise((resolve, reject) => {
      const found = events.slice(after).find((e) => e.name === name && predicate(e));
      if (found) return resolve(found);
      const timer = setTimeout(
        () => reject(new Error(`no ${name} event within ${PATIENCE} ms: ${JSON.stringify(events.slice(-10))}`)),
        PATIENCE,
      );
      const listener = (event) => {
        if (!predicate(event)) return;
        clearTimeout(timer);
        client.off(name, listener);
        resolve({ name, ...event });
      };
      client.on(name, listener);
    });
  /** The `seq`s of `topic`'s message events. */
  const seqs = (topic) => events.filter((e) => e.name === "message" && e.topic === topic).map((e) => e.seq);
  return { client, events, next, seqs };
}

/** Asserts per-topic order and uniqueness of `message` events within one epoch. */
export function checkOnceInOrder(events, topic) {
  let last;
  for (const event of events) {
    if (event.topic !== topic) continue;
    if (event.name === "subscribed" && (!event.resumed || !event.recovered)) last = event.seq;
    if (event.name === "reset") last = event.seq;
    if (event.name !== "message") continue;
    if (last !== undefined && event.seq !== last + 1) {
      throw new Error(`${topic}: message ${event.seq} after ${last}`);
    }
    last = event.seq;
  }
}

/**
 * A real nginx (the Debian package) with two listeners in front of Clarion's `upstream` port
 * (its routes: /ws, /sse, /stream, /publish) and of `site` (everything else): `plain` is a
 * reverse proxy with nginx's defaults (HTTP/1.0 upstream, response buffering on, `Upgrade` not
 * forwarded, so WebSockets cannot pass), `upgrading` the usual WebSocket-capable config. One
 * process (`master_process off`) with its own prefix in a temp dir, ended by PID.
 */
export class Nginx {
  static async start(upstream, site) {
    const nginx = new Nginx();
    await nginx.spawn(upstream, site);
    return nginx;
  }

  async spawn(upstream, site) {
    this.plain = await freePort();
    this.upgrading = await freePort();
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "clarion-js-nginx-"));
    const d = this.dir;
    const routes = "~ ^/(ws|sse|stream|publish)(/|$)";
    const config = `daemon off;
master_process off;
worker_processes 1;
pid ${d}/nginx.pid;
error_log ${d}/error.log warn;
events { worker_connections 512; }
http {
    access_log off;
    client_body_temp_path ${d}/body;
    proxy_temp_path ${d}/proxy;
    fastcgi_temp_path ${d}/fastcgi;
    uwsgi_temp_path ${d}/uwsgi;
    scgi_temp_path ${d}/scgi;
    server {
        listen 127.0.0.1:${this.plain};
        location ${routes} { proxy_pass http://127.0.0.1:${upstream}; }
        location / { proxy_pass http://127.0.0.1:${site}; }
    }
    server {
        listen 127.0.0.1:${this.upgrading};
        location ${routes} {
            proxy_pass http://127.0.0.1:${upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }
        location / { proxy_pass http://127.0.0.1:${site}; }
    }
}
`;
    fs.writeFileSync(path.join(d, "nginx.conf"), config);
    // Debian puts it in /usr/sbin, which a user's PATH may lack.
    const binary = fs.existsSync("/usr/sbin/nginx") ? "/usr/sbin/nginx" : "nginx";
    const child = spawn(binary, ["-p", d, "-c", path.join(d, "nginx.conf"), "-e", path.join(d, "error.log")], {
      stdio: "ignore",
    });
    this.child = child;
    this.exited = new Promise((resolve) => child.on("exit", resolve));
    child.on("error", (error) => {
      throw new Error(`cannot run nginx (${error.message}): apt-get install nginx`);
    });
    const accepts = (port) =>
      new Promise((resolve) => {
        const socket = net.connect(port, "127.0.0.1");
        socket.on("connect", () => {
          socket.destroy();
          resolve(true);
        });
        socket.on("error", () => resolve(false));
      });
    await until(async () => (await accepts(this.plain)) && (await accepts(this.upgrading)), "nginx listens");
  }

  /** Its error log. */
  log() {
    return fs.readFileSync(path.join(this.dir, "error.log"), "utf8");
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.exited;
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
