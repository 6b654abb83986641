// The public types of the client: options, events, positions and errors (docs/clients.md,
// sections 2, 3, 8 and 12).

// The WebSocket types are loose on purpose: the browser's, undici's and the `ws` package's
// declarations differ in their event and option types, and each must be accepted as is.
/* eslint-disable @typescript-eslint/no-explicit-any */

/** The constructor of a WebSocket: the browser's, Node's global one, or the `ws` package's. */
export interface WebSocketConstructor {
  new (url: string, ...rest: any[]): WebSocketLike;
}

/** What the client uses of a WebSocket (the standard API, which `ws` implements too). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** The constructor of an `EventSource` (the browser's, or a polyfill). */
export interface EventSourceConstructor {
  new (url: string, ...rest: any[]): EventSourceLike;
}

/** What the client uses of an `EventSource`. */
export interface EventSourceLike {
  onerror: ((event: any) => void) | null;
  addEventListener(type: string, listener: (event: any) => void): void;
  close(): void;
}
/* eslint-enable @typescript-eslint/no-explicit-any */

/** How the client reaches the server: a WebSocket to `/ws`, or `/sse` plus `POST /publish`. */
export type Transport = "websocket" | "sse";

/** Backoff between attempts: `cap(n) = min(max, min × factor^(n−1))`, delay uniform in `[0, cap(n)]`. */
export interface BackoffOptions {
  /** `cap(1)` in ms (default 1000). */
  min?: number;
  /** Largest cap in ms (default 30000). */
  max?: number;
  /** Growth of the cap per failed attempt (default 2). */
  factor?: number;
  /** A connection open this long (ms) is stable and resets the count (default 10000). */
  resetAfter?: number;
}

/** Options of {@link connect}; every time is in milliseconds unless said otherwise. */
export interface Options {
  /** A fixed token (4001 and 4003 then stop the client). */
  token?: string;
  /** Async token provider, called before every connection attempt and every refresh. Wins over `token`. */
  getToken?: () => Promise<string>;
  /** Heartbeat interval asked in `hello`, in seconds; 0 = none (default 20). */
  heartbeat?: number;
  backoff?: BackoffOptions;
  /** Token, upgrade and `hello` ack of one attempt (default 10000). */
  connectTimeout?: number;
  /** From `publish()` to its ack (default 30000; 0 = none). */
  publishTimeout?: number;
  /** Publishes held while disconnected (default 100; 0 = reject at once). */
  maxQueued?: number;
  /** Bytes of those publishes' commands (default 1048576). */
  maxQueuedBytes?: number;
  /** Refresh this long before the server would close with 4001, at most half the time left (default 30000). */
  refreshBefore?: number;
  /**
   * The WebSocket constructor to use (TypeScript client only). Default: the global `WebSocket`
   * where the runtime has one, else the `ws` package (an optional peer dependency). With a
   * constructor whose instances have `ping` (the `ws` package's), the token goes in an
   * `Authorization: Bearer` header; otherwise in the URL's `token` query parameter.
   */
  WebSocket?: WebSocketConstructor;
  /**
   * The transports to use, in order of preference (default `["websocket", "sse"]`): with both,
   * the client falls back to SSE when WebSockets do not get through and tries WebSocket again
   * later (docs/clients.md, section 15); with one, it uses only that one.
   */
  transports?: Transport[];
  /** While on SSE, the first WebSocket probe after this long, doubling up to 16× (default 60000; 0 = none). */
  websocketRetry?: number;
  /**
   * The EventSource constructor for SSE (TypeScript client only). Default: the global one
   * (browsers; the token then goes in the URL), else `fetch` with a streaming body (Node 20;
   * the token in an `Authorization: Bearer` header).
   */
  EventSource?: EventSourceConstructor;
}

export type ClientState = "connecting" | "connected" | "disconnected" | "closed";
export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed" | "failed";

/** Where a subscription stands: persist it to resume later with `subscribe(topic, position)`. */
export interface Position {
  seq: number;
  epoch: string;
}

export interface ConnectedEvent {
  /** The transport of this connection. */
  transport: Transport;
  /** The heartbeat interval in effect, in seconds (0: none). */
  heartbeat: number;
  /** Time until the server would close with 4001, in ms, when it uses tokens. */
  expiresIn?: number;
}

export interface DisconnectedEvent {
  /** The transport of the connection or attempt that ended. */
  transport: Transport;
  code: number;
  reason: string;
  willRetry: boolean;
  /** Delay before the next attempt, in ms, when retrying. */
  retryIn?: number;
  /** The HTTP status of a refused upgrade, where the runtime shows it (Node with `ws`). */
  status?: number;
}

export interface SubscribedEvent {
  topic: string;
  /** Whether the subscribe carried `since` (a resume). */
  resumed: boolean;
  /** Whether every message after `since` is replayed; when `resumed && !recovered`, reload the topic's state. */
  recovered: boolean;
  seq: number;
  epoch: string;
}

export interface MessageEvent {
  topic: string;
  seq: number;
  /** The JSON value published; a `Uint8Array` for binary payloads. */
  data: unknown;
}

export interface ResetEvent {
  topic: string;
  /** Drop what you hold of the topic above this `seq`; the next message is `seq + 1`. */
  seq: number;
  epoch: string;
  /** The numbering started over: reload the topic's state. */
  epochChanged: boolean;
}

export interface ErrorEvent {
  code: string;
  message: string;
  topic?: string;
}

export interface EventMap {
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  subscribed: SubscribedEvent;
  message: MessageEvent;
  reset: ResetEvent;
  error: ErrorEvent;
}

export type EventName = keyof EventMap;

/** A publish's ack: `seq` is absent in cluster mode (Redis numbers the message after the ack). */
export interface PublishAck {
  topic: string;
  seq?: number;
}

/**
 * Why a `publish` (or `ping`) was rejected. `code` is the server's (`forbidden`, `invalid_topic`,
 * `too_many_topics`, `unavailable`, `bad_request`) or a local one (`disconnected`, `queue_full`,
 * `timeout`, `closed`). `maybeSent`: the server may have taken it.
 */
export class ClarionError extends Error {
  readonly code: string;
  readonly maybeSent: boolean;

  constructor(code: string, message: string, maybeSent = false) {
    super(message);
    this.name = "ClarionError";
    this.code = code;
    this.maybeSent = maybeSent;
  }
}
