// Which WebSocket to use and how the token travels (docs/clients.md, section 4.1 step 3):
// the browser's or Node's global `WebSocket` with the token in the query, or the `ws` package
// (Node 20, which has no global one) with an `Authorization: Bearer` header.

import type { WebSocketConstructor, WebSocketLike } from "./types.js";

/** The optional peer dependency, named through a variable so bundlers leave it alone. */
const WS_PACKAGE = "ws";

let loaded: Promise<WebSocketConstructor> | undefined;

/**
 * The constructor to use: the one given, else the global one, else the `ws` package. Rejects
 * when none is available.
 */
export function resolveWebSocket(given?: WebSocketConstructor): Promise<WebSocketConstructor> {
  if (given) return Promise.resolve(given);
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (global) return Promise.resolve(global);
  loaded ??= import(/* webpackIgnore: true */ /* @vite-ignore */ WS_PACKAGE).then(
    (module: { default?: WebSocketConstructor; WebSocket?: WebSocketConstructor }) => {
      const ctor = module.WebSocket ?? module.default;
      if (!ctor) throw new Error("the ws package has no WebSocket export");
      return ctor;
    },
    (error: unknown) => {
      loaded = undefined;
      throw new Error(
        `no WebSocket in this runtime and the ws package cannot be loaded (npm install ws, ` +
          `or pass options.WebSocket): ${String(error)}`,
      );
    },
  );
  return loaded;
}

/** Whether instances take headers and show pings: the `ws` package's API. */
function takesHeaders(ctor: WebSocketConstructor): boolean {
  return typeof (ctor.prototype as { ping?: unknown } | undefined)?.ping === "function";
}

/** Opens a WebSocket to `url` carrying `token` where the runtime allows it. */
export function open(ctor: WebSocketConstructor, url: string, token?: string): WebSocketLike {
  let socket: WebSocketLike;
  if (takesHeaders(ctor)) {
    const headers = token === undefined ? {} : { Authorization: `Bearer ${token}` };
    socket = new ctor(url, [], { headers });
  } else {
    socket = new ctor(token === undefined ? url : withToken(url, token));
  }
  socket.binaryType = "arraybuffer";
  return socket;
}

/** `url` with `token=<token>` added to its query. */
export function withToken(url: string, token: string): string {
  const parsed = new URL(url);
  parsed.searchParams.set("token", token);
  return parsed.toString();
}

/** Subscribes to WebSocket pings where the runtime shows them (`ws`), for the heartbeat watch. */
export function onPing(socket: WebSocketLike, listener: () => void): void {
  const emitter = socket as unknown as { on?: (event: string, listener: () => void) => void };
  if (typeof emitter.on === "function") emitter.on("ping", listener);
}

/** The HTTP status of a refused upgrade, from an error event where the runtime tells it. */
export function upgradeStatus(event: unknown): number | undefined {
  const e = event as { message?: unknown; error?: { message?: unknown } } | null;
  const text = String(e?.message ?? e?.error?.message ?? "");
  const match = /Unexpected server response: (\d{3})/.exec(text);
  return match ? Number(match[1]) : undefined;
}

/**
 * Ends a socket the client gives up on without waiting for the close handshake (4.4): listeners
 * are replaced by no-ops (an `error` event without a listener would throw in `ws`), then the
 * socket is terminated where the API allows, else closed with `code`.
 */
export function abandon(socket: WebSocketLike, code: number, reason: string): void {
  const noop = () => {};
  socket.onopen = noop;
  socket.onmessage = noop;
  socket.onclose = noop;
  socket.onerror = noop;
  const terminate = (socket as { terminate?: () => void }).terminate;
  try {
    if (typeof terminate === "function") terminate.call(socket);
    else socket.close(code, reason);
  } catch {
    // Already closing: nothing more to do.
  }
}
