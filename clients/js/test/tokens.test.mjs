// Tokens against the real server (auth = "jwt", no leeway): refreshed before expiry without a
// reconnect; a fixed token that expires stops the client with 4001; a provider that keeps
// returning a refused token stops it with 4003, one that returns a new token gets back in.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Clarion, jwt, nowSeconds, recorded, sleep, until } from "./helpers.mjs";

const SECRET = "a secret of at least thirty-two bytes, for the SDK tests";
const grants = { subscribe: ["t.*"], publish: ["t.*"] };
const token = (lifetime, secret = SECRET) => jwt({ exp: nowSeconds() + lifetime, ...grants }, secret);

let server;
before(async () => {
  server = await Clarion.start(["--auth", "jwt", "--jwt-leeway", "0"], { env: { CLARION_JWT_SECRET: SECRET } });
});
after(async () => {
  await server.stop();
});

test("refreshed before expiry, without a reconnect", async () => {
  let issued = 0;
  const { client, events, next } = recorded(server.url(), {
    getToken: async () => {
      issued++;
      return token(4);
    },
  });
  try {
    client.subscribe("t.refresh");
    const connected = await next("connected");
    assert.ok(connected.expiresIn > 0 && connected.expiresIn <= 4000, `expiresIn ${connected.expiresIn}`);
    await next("subscribed");
    const refreshesBefore = await server.stat("token_refreshes");
    // Each token lives 4 s; without refreshes the server would have closed with 4001 twice.
    await until(() => issued >= 4, "three refreshes");
    await sleep(1000);
    assert.equal(client.state, "connected");
    assert.deepEqual(
      events.filter((e) => e.name === "disconnected" || e.name === "error"),
      [],
      "no disconnect, no error",
    );
    assert.ok((await server.stat("token_refreshes")) - refreshesBefore >= 3);
    assert.deepEqual(await client.publish("t.refresh", 1), { topic: "t.refresh", seq: 1 });
  } finally {
    client.close();
  }
});

test("a fixed token that expires: 4001 and a stop", async () => {
  const { client, next } = recorded(server.url(), { token: token(1) });
  try {
    await next("connected");
    const down = await next("disconnected");
    assert.deepEqual({ code: down.code, willRetry: down.willRetry }, { code: 4001, willRetry: false });
    assert.equal(client.state, "closed");
    await assert.rejects(client.publish("t.x", 1), { code: "closed" });
  } finally {
    client.close();
  }
});

test("with getToken, an expired connection comes back with a new token", async () => {
  let issued = 0;
  const { client, next } = recorded(server.url(), {
    connectTimeout: 3000,
    // A 1 s token, then a provider that hangs (so the refresh cannot happen), then good tokens.
    getToken: () => {
      issued++;
      if (issued === 1) return Promise.resolve(token(1));
      if (issued === 2) return new Promise(() => {});
      return Promise.resolve(token(600));
    },
  });
  try {
    const down = await next("disconnected");
    assert.deepEqual({ code: down.code, willRetry: down.willRetry }, { code: 4001, willRetry: true });
    await until(() => client.state === "connected" && issued >= 3, "connected with a new token");
  } finally {
    client.close();
  }
});

test("a provider that returns the refused token again: 4003 and a stop; a new one: back in", async () => {
  const bad = token(600, "another secret of at least thirty-two bytes");
  let asked = 0;
  const stuck = recorded(server.url(), {
    getToken: async () => {
      asked++;
      return bad;
    },
  });
  try {
    const down = await stuck.next("disconnected");
    assert.deepEqual({ code: down.code, willRetry: down.willRetry }, { code: 4003, willRetry: false });
    assert.equal(asked, 2, "asked once to connect, once after the refusal");
    assert.equal(stuck.client.state, "closed");
  } finally {
    stuck.client.close();
  }

  let calls = 0;
  const recovering = recorded(server.url(), { getToken: async () => (++calls === 1 ? bad : token(600)) });
  try {
    const down = await recovering.next("disconnected");
    assert.deepEqual({ code: down.code, willRetry: down.willRetry }, { code: 4003, willRetry: true });
    await recovering.next("connected");
    assert.equal(calls, 2, "the new token is used, not fetched again");
  } finally {
    recovering.client.close();
  }

  // A fixed token refused: a stop.
  const fixed = recorded(server.url(), { token: bad });
  try {
    const down = await fixed.next("disconnected");
    assert.deepEqual({ code: down.code, willRetry: down.willRetry }, { code: 4003, willRetry: false });
  } finally {
    fixed.client.close();
  }
});

test("a provider that fails: error token_provider, and retries", async () => {
  let calls = 0;
  const { client, next } = recorded(server.url(), {
    getToken: async () => {
      if (++calls === 1) throw new Error("auth service down");
      return token(600);
    },
  });
  try {
    const error = await next("error");
    assert.deepEqual({ code: error.code, message: error.message }, { code: "token_provider", message: "auth service down" });
    const down = await next("disconnected");
    assert.deepEqual(
      { code: down.code, reason: down.reason, willRetry: down.willRetry },
      { code: 1006, reason: "token provider failed", willRetry: true },
    );
    await next("connected");
  } finally {
    client.close();
  }
});
