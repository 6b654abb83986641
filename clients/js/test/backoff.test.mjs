// Backoff and when to stop: the spacing of attempts against a server that is down (jittered,
// within [0, cap(n)], growing), the count reset after a stable connection, and the close-code
// table of docs/clients.md section 6 for codes the real server does not send on /ws.

import assert from "node:assert/strict";
import { test } from "node:test";
import { WebSocketServer } from "ws";
import { Backoff } from "../dist/backoff.js";
import { Clarion, freePort, recorded, sleep } from "./helpers.mjs";

const cap = (n, { min, max, factor }) => Math.min(max, min * factor ** (n - 1));

test("Backoff: full jitter within cap(n); reset to n = 1 only by a stable connection not ended by the client's fault", () => {
  const backoff = new Backoff({ min: 100, max: 1000, factor: 3, resetAfter: 500 });
  const caps = [100, 300, 900, 1000, 1000];
  const draws = caps.map(() => []);
  for (let round = 0; round < 200; round++) {
    for (let n = 1; n <= caps.length; n++) {
      // n = 1 after a stable connection; then failed attempts.
      const delay = n === 1 ? backoff.next(600, 1001) : backoff.next(0, 1006);
      assert.ok(delay >= 0 && delay <= caps[n - 1], `delay ${delay} for n = ${n}`);
      draws[n - 1].push(delay);
    }
  }
  for (const [i, values] of draws.entries()) {
    // 200 uniform draws: spread over the range (each check fails with probability < 1e-9).
    assert.ok(Math.min(...values) < caps[i] * 0.25 && Math.max(...values) > caps[i] * 0.75, `n = ${i + 1}`);
  }
  // A connection that stayed up but ended with a code that blames the client grows n.
  const after1013 = Array.from({ length: 50 }, () => {
    const g = new Backoff({ min: 100, max: 100000, factor: 2, resetAfter: 500 });
    g.next(0, 1006);
    g.next(0, 1006);
    return g.next(10_000, 1013); // n = 3: cap 400
  });
  assert.ok(Math.max(...after1013) > 100, "not reset by a stable connection closed with 1013");
  assert.throws(() => new Backoff({ min: -1 }), TypeError);
  assert.throws(() => new Backoff({ factor: 0.5 }), TypeError);
});

test("with the server down, attempts are spaced within [0, cap(n)] and the caps grow; a stable connection resets", async () => {
  const port = await freePort(); // nothing listens: every attempt is refused at once
  const options = { min: 40, max: 640, factor: 2, resetAfter: 300 };
  // WebSocket only: the spacing is the subject here (the fallback's turns are in sse.test.mjs).
  const only = { backoff: options, transports: ["websocket"] };
  const { client, events, next } = recorded(`ws://127.0.0.1:${port}/ws`, only);
  const attempts = 9;
  try {
    for (let i = 0; i < attempts; i++) await next("disconnected", () => true, i);
    const downs = events.filter((e) => e.name === "disconnected").slice(0, attempts);
    downs.forEach((down, i) => {
      assert.equal(down.code, 1006);
      assert.equal(down.willRetry, true);
      assert.ok(down.retryIn >= 0 && down.retryIn <= cap(i + 1, options), `attempt ${i + 1}: retryIn ${down.retryIn}`);
    });
    // Jitter: not the caps themselves, and not all alike.
    const delays = downs.map((d) => d.retryIn);
    assert.ok(new Set(delays).size > 1, `${delays}`);
    // The caps grew: with n ≥ 5 (cap ≥ 640) a draw above the first cap (40) is near certain.
    assert.ok(delays.slice(4).some((d) => d > 40), `${delays}`);

    // Measured spacing, as bounds: not before the delay said (less 50 ms: Node's timers count
    // from the event loop's cached clock, which lags performance.now() by the work the loop did
    // since it last looked), and not long after it (a refused attempt fails at once).
    const times = [];
    const spacing = recorded(`ws://127.0.0.1:${port}/ws`, only);
    spacing.client.on("disconnected", (e) => times.push({ at: performance.now(), retryIn: e.retryIn }));
    for (let i = 0; i < 5; i++) await spacing.next("disconnected", () => true, i);
    spacing.client.close();
    for (let i = 1; i < 5; i++) {
      const gap = times[i].at - times[i - 1].at;
      const { retryIn } = times[i - 1];
      assert.ok(gap >= retryIn - 50 && gap <= retryIn + 10_000, `attempt ${i + 1} came ${gap} ms after, retryIn ${retryIn}`);
    }

    // The server comes up; the connection stays up past resetAfter; then it dies: n = 1 again.
    const server = await Clarion.start([], { port });
    try {
      await next("connected");
      await sleep(500);
      await server.stop("SIGKILL");
      const down = await next("disconnected", () => true, events.length);
      assert.ok(down.retryIn <= options.min, `reset to cap(1): retryIn ${down.retryIn}`);
    } finally {
      await server.stop();
    }
  } finally {
    client.close();
  }
});

/** A `ws` peer that answers every connection by closing it with `code`, counting them. */
async function closingPeer(code) {
  const port = await freePort();
  const peer = new WebSocketServer({ host: "127.0.0.1", port });
  const seen = { connections: 0, tokens: [] };
  peer.on("connection", (socket, request) => {
    seen.connections++;
    seen.tokens.push(request.headers.authorization);
    socket.close(code, "closing");
  });
  await new Promise((resolve) => peer.on("listening", resolve));
  return { url: `ws://127.0.0.1:${port}/ws`, seen, close: () => new Promise((r) => peer.close(r)) };
}

test("close codes: 1008 stops unless getToken yields a new token; 1013 retries; 4003 with a failing provider retries", async () => {
  const policy = await closingPeer(1008);
  try {
    const fixed = recorded(policy.url, { token: "t1" });
    const down = await fixed.next("disconnected");
    assert.deepEqual({ code: down.code, willRetry: down.willRetry }, { code: 1008, willRetry: false });
    assert.equal(fixed.client.state, "closed");
    assert.equal(policy.seen.tokens[0], "Bearer t1", "the ws package sends the token as a header");

    const same = recorded(policy.url, { getToken: async () => "t2" });
    const sameDown = await same.next("disconnected");
    assert.equal(sameDown.willRetry, false, "the same token again: stop");

    let n = 0;
    const fresh = recorded(policy.url, { getToken: async () => `fresh-${++n}` });
    const freshDown = await fresh.next("disconnected");
    assert.equal(freshDown.willRetry, true, "a new token: retry");
    await fresh.next("disconnected", () => true, 2);
    assert.equal(n, 3, "connect, after the refusal (used for the retry), after the second refusal");
    fresh.client.close();

    let calls = 0;
    const failing = recorded(policy.url, {
      getToken: async () => {
        if (++calls === 2) throw new Error("auth service down");
        return "t3";
      },
    });
    const failDown = await failing.next("disconnected");
    assert.equal(failDown.willRetry, false, "after 1008 a failing provider gives no reason to come back");
  } finally {
    await policy.close();
  }

  const later = await closingPeer(1013);
  try {
    const client = recorded(later.url, { backoff: { min: 10, max: 10 } });
    for (let i = 0; i < 3; i++) {
      const down = await client.next("disconnected", () => true, i);
      assert.deepEqual({ code: down.code, willRetry: down.willRetry }, { code: 1013, willRetry: true });
    }
    client.client.close();
  } finally {
    await later.close();
  }

  const refused = await closingPeer(4003);
  try {
    let calls = 0;
    const client = recorded(refused.url, {
      getToken: async () => {
        if (++calls === 2) throw new Error("auth service down");
        return "same";
      },
    });
    const down = await client.next("disconnected");
    assert.equal(down.willRetry, true, "after 4003 a failing provider may be down, not the token wrong");
    const error = client.events.find((e) => e.name === "error");
    assert.equal(error?.code, "token_provider");
    const stop = await client.next("disconnected", () => true, client.events.length);
    assert.equal(stop.willRetry, false, "then the same token again: stop");
  } finally {
    await refused.close();
  }
});

test("HTTP 403 at the upgrade (seen through ws) stops; 429 retries", async () => {
  for (const [status, willRetry] of [
    [403, false],
    [429, true],
  ]) {
    const port = await freePort();
    const peer = new WebSocketServer({
      host: "127.0.0.1",
      port,
      verifyClient: (_info, done) => done(false, status),
    });
    await new Promise((resolve) => peer.on("listening", resolve));
    const client = recorded(`ws://127.0.0.1:${port}/ws`);
    try {
      const down = await client.next("disconnected");
      assert.deepEqual(
        { code: down.code, status: down.status, willRetry: down.willRetry },
        { code: 1006, status, willRetry },
      );
    } finally {
      client.client.close();
      await new Promise((r) => peer.close(r));
    }
  }
});
