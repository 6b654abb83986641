// The client: one connection at a time (a WebSocket to `/ws`, or the `/sse` fallback with HTTP
// publishes), reconnected with backoff, with subscriptions that resume, publishes answered by
// acks, a heartbeat watch and token refresh. Every rule here is a section of docs/clients.md,
// cited where it applies.

import { Backoff } from "./backoff.js";
import { checkPublish, endpoints, openStream, postPublish, resolveEventSource, type StreamHandle } from "./sse.js";
import { abandon, onPing, open, resolveWebSocket, upgradeStatus } from "./transport.js";
import {
  ClarionError,
  type ClientState,
  type ConnectedEvent,
  type EventMap,
  type EventName,
  type Options,
  type Position,
  type PublishAck,
  type SubscriptionState,
  type Transport,
  type WebSocketLike,
} from "./types.js";

/** Close code of the heartbeat watch (section 10); the server never sends it. */
const HEARTBEAT_TIMEOUT = 4000;
/** How long a wake-up probe (`online`, page visible again) may wait for its answer, in ms. */
const PROBE_TIMEOUT = 5000;
/** A refresh that failed is tried again at half the time left, if that is more than this (ms). */
const REFRESH_RETRY_MIN = 2000;
/**
 * WebSocket attempts in a row that must fail to get through before the client falls back to
 * SSE (section 15): one while no WebSocket has worked for this client, three once one has (a
 * restarting server refuses handshakes too, and that is no reason to leave WebSockets).
 */
const FALLBACK_AFTER_NEVER_WORKED = 1;
const FALLBACK_AFTER_WORKED = 3;
/** The WebSocket probe's interval while on SSE doubles up to this many times `websocketRetry`. */
const PROBE_BACKOFF_MAX = 16;

const now = (): number => performance.now();

type Timer = ReturnType<typeof setTimeout>;

/** A publish from its call to its one resolve or reject (section 8). */
interface OutgoingPublish {
  /** The command without its `id` and closing brace. */
  head: string;
  /** Its topic and data (encoded), for an HTTP publish. */
  topic: string;
  json: string;
  /** Its size as sent, for `maxQueuedBytes`. */
  bytes: number;
  resolve: (ack: PublishAck) => void;
  reject: (error: ClarionError) => void;
  timer?: Timer;
  /** Where it was sent, once it was. */
  sent?: { conn: Connection; id: number };
  settled: boolean;
}

/** What a command waits for, by `id`. */
type Pending =
  | { kind: "hello" }
  | { kind: "subscribe"; sub: Subscription; resumed: boolean }
  | { kind: "unsubscribe"; done?: () => void }
  | { kind: "publish"; publish: OutgoingPublish }
  | { kind: "refresh"; token: string }
  | {
      kind: "ping";
      sent: number;
      resolve: (rtt: number) => void;
      reject: (error: ClarionError) => void;
    };

/** One attempt and, once the `hello` ack came, the connection it became. */
class Connection {
  /** `token`: waiting for the provider; `opening`: the upgrade; `open`: commands flow. */
  phase: "token" | "opening" | "open" | "connected" = "token";
  readonly transport: Transport;
  socket?: WebSocketLike;
  /** SSE: the stream now open, if any (none while no topic is subscribed). */
  stream?: StreamHandle;
  /** SSE: the topics the open stream resumes from a position (its `since`). */
  resumed = new Set<string>();
  /** SSE: topics subscribed before the stream was reopened, whose recovered ack is not news. */
  readonly quiet = new Set<string>();
  reopenQueued = false;
  /** Whether anything came from the server on it (section 15: did it get through). */
  heard = false;
  /** The token this attempt used. */
  token?: string;
  /** The HTTP status of a refused upgrade, when the runtime told it. */
  status?: number;
  nextId = 1;
  readonly pending = new Map<number, Pending>();
  connectedAt = 0;
  lastHeard = 0;
  /** When the server would close with 4001 (`performance.now()` ms), if it uses tokens. */
  expiresAt?: number;
  refreshing = false;
  probing = false;
  readonly timers: { connect?: Timer; heartbeat?: Timer; refresh?: Timer; probe?: Timer } = {};

  constructor(transport: Transport) {
    this.transport = transport;
  }

  get canSend(): boolean {
    return this.phase === "open" || this.phase === "connected";
  }

  clearTimers(): void {
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
  }
}

/** A topic the application subscribed to; it lives across reconnections until ended. */
export class Subscription {
  readonly topic: string;
  /** @internal */
  stateValue: SubscriptionState = "subscribing";
  /** @internal The last `seq` accounted for (section 7.1). */
  seq?: number;
  /** @internal */
  epoch?: string;
  /** @internal The `id` of its subscribe in flight on the current connection. */
  pendingId?: number;
  /** @internal */
  private readonly client: Client;

  /** @internal */
  constructor(client: Client, topic: string, position?: Position) {
    this.client = client;
    this.topic = topic;
    if (position) {
      this.seq = position.seq;
      this.epoch = position.epoch;
    }
  }

  get state(): SubscriptionState {
    return this.stateValue;
  }

  /** Where it stands: persist it to resume later with `subscribe(topic, {since, epoch})`. */
  get position(): Position | undefined {
    return this.seq === undefined || this.epoch === undefined
      ? undefined
      : { seq: this.seq, epoch: this.epoch };
  }

  /** Ends it (no more `message` for it); resolves on the server's ack, or at once when offline. */
  unsubscribe(): Promise<void> {
    return this.client.unsubscribeSubscription(this);
  }
}

type Listener<K extends EventName> = (event: EventMap[K]) => void;

/** Options with their defaults applied. */
interface Settings {
  token?: string;
  getToken?: () => Promise<string>;
  heartbeat: number;
  connectTimeout: number;
  publishTimeout: number;
  maxQueued: number;
  maxQueuedBytes: number;
  refreshBefore: number;
  transports: Transport[];
  websocketRetry: number;
}

/** A client of one Clarion server's `/ws` (docs/clients.md). */
export class Client {
  private readonly url: string;
  private readonly settings: Settings;
  private readonly options: Options;
  private readonly backoff: Backoff;
  private stateValue: ClientState = "connecting";
  private conn?: Connection;
  /** Subscriptions not ended, in the order the application first subscribed. */
  private readonly subs = new Map<string, Subscription>();
  /** Publishes waiting for a connection, in order. */
  private readonly queue: OutgoingPublish[] = [];
  private queuedBytes = 0;
  private readonly listeners = new Map<EventName, Set<Listener<EventName>>>();
  private retryTimer?: Timer;
  /** A token the provider gave after a refusal, for the next attempt (section 6). */
  private nextToken?: string;
  private unhook?: () => void;
  /** The transport of the next attempt (section 15). */
  private transportValue: Transport;
  /** WebSocket attempts in a row that did not get through. */
  private wsFailures = 0;
  /** Whether a WebSocket connection of this client ever heard the server. */
  private wsWorked = false;
  /** While on SSE: the next WebSocket probe, and the delay after it. */
  private probeTimer?: Timer;
  private probeDelay: number;
  private probeSocket?: WebSocketLike;
  /** The next attempt comes at once (a probe found WebSockets working again). */
  private switching = false;
  /** HTTP publishes go one at a time, in order (section 15). */
  private httpPublishes: Promise<void> = Promise.resolve();
  private readonly http: { sse: string; publish: string };

  constructor(url: string, options: Options = {}) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new TypeError(`not a URL: ${url}`);
    }
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
      throw new TypeError(`not a ws: or wss: URL: ${url}`);
    }
    this.url = url;
    this.options = options;
    this.backoff = new Backoff(options.backoff);
    this.settings = {
      token: options.token,
      getToken: options.getToken,
      heartbeat: options.heartbeat ?? 20,
      connectTimeout: options.connectTimeout ?? 10000,
      publishTimeout: options.publishTimeout ?? 30000,
      maxQueued: options.maxQueued ?? 100,
      maxQueuedBytes: options.maxQueuedBytes ?? 1048576,
      refreshBefore: options.refreshBefore ?? 30000,
      transports: options.transports ?? ["websocket", "sse"],
      websocketRetry: options.websocketRetry ?? 60000,
    };
    const transports = this.settings.transports;
    if (
      !Array.isArray(transports) ||
      transports.length === 0 ||
      transports.some((t) => t !== "websocket" && t !== "sse") ||
      new Set(transports).size !== transports.length
    ) {
      throw new TypeError('transports must list "websocket", "sse" or both, each once');
    }
    if (!(this.settings.websocketRetry >= 0)) throw new TypeError("websocketRetry must be >= 0");
    this.transportValue = transports[0] as Transport;
    this.probeDelay = this.settings.websocketRetry;
    this.http = endpoints(url);
    this.unhook = hookBrowser(this);
    // After the caller's synchronous `on(…)` calls, so they hear the first attempt.
    queueMicrotask(() => void this.attempt());
  }

  get state(): ClientState {
    return this.stateValue;
  }

  /** The transport of the current connection, or of the next attempt. */
  get transport(): Transport {
    return this.conn?.transport ?? this.transportValue;
  }

  on<K extends EventName>(event: K, listener: Listener<K>): this {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as Listener<EventName>);
    return this;
  }

  off<K extends EventName>(event: K, listener: Listener<K>): this {
    this.listeners.get(event)?.delete(listener as Listener<EventName>);
    return this;
  }

  /**
   * Subscribes to `topic` (section 2), from a persisted position when `since` and `epoch` are
   * given. Subscribing to a topic held already returns its subscription.
   */
  subscribe(topic: string, from?: { since?: number; epoch?: string }): Subscription {
    if (typeof topic !== "string") throw new TypeError("topic must be a string");
    const since = from?.since;
    const epoch = from?.epoch;
    if ((since === undefined) !== (epoch === undefined)) {
      throw new TypeError("since and epoch go together: give both or neither");
    }
    if (since !== undefined && (!Number.isSafeInteger(since) || since < 0)) {
      throw new TypeError("since must be an integer >= 0");
    }
    const held = this.subs.get(topic);
    if (held) return held;
    const position = since === undefined ? undefined : { seq: since, epoch: epoch as string };
    const sub = new Subscription(this, topic, position);
    if (this.stateValue === "closed") {
      sub.stateValue = "unsubscribed";
      return sub;
    }
    this.subs.set(topic, sub);
    const conn = this.conn;
    if (conn?.transport === "sse") this.reopenSoon(conn);
    else if (conn?.canSend) this.sendSubscribe(conn, sub);
    return sub;
  }

  /** Ends the subscription of `topic` (sections 2 and 7.7). */
  unsubscribe(topic: string): Promise<void> {
    const sub = this.subs.get(topic);
    if (!sub) return Promise.resolve();
    this.subs.delete(topic);
    sub.stateValue = "unsubscribed";
    sub.pendingId = undefined;
    const conn = this.conn;
    if (conn?.transport === "sse") {
      this.reopenSoon(conn);
      return Promise.resolve();
    }
    if (!conn?.canSend) return Promise.resolve();
    return new Promise((resolve) => {
      this.command(conn, head({ type: "unsubscribe", topic }), { kind: "unsubscribe", done: resolve });
    });
  }

  /** @internal */
  unsubscribeSubscription(sub: Subscription): Promise<void> {
    return this.subs.get(sub.topic) === sub ? this.unsubscribe(sub.topic) : Promise.resolve();
  }

  /**
   * Publishes `data` (any JSON value; a string is published as text) to `topic`: resolved by
   * the ack, rejected with the server's error code or a local one (section 8). Throws TypeError
   * for data JSON cannot encode, and for binary data.
   */
  publish(topic: string, data: unknown): Promise<PublishAck> {
    if (typeof topic !== "string") throw new TypeError("topic must be a string");
    if (
      data instanceof ArrayBuffer ||
      ArrayBuffer.isView(data) ||
      (typeof Blob !== "undefined" && data instanceof Blob)
    ) {
      throw new TypeError("binary data cannot go through /ws: publish it with POST /publish");
    }
    const json = JSON.stringify(data); // throws TypeError for a BigInt or a cycle
    if (json === undefined) throw new TypeError("data is not a JSON value");
    if (this.stateValue === "closed") {
      return Promise.reject(new ClarionError("closed", "the client is closed"));
    }
    const command = `{"type":"publish","topic":${JSON.stringify(topic)},"data":${json}`;
    return new Promise<PublishAck>((resolve, reject) => {
      const publish: OutgoingPublish = {
        head: command,
        topic,
        json,
        bytes: utf8Length(command) + 1,
        resolve,
        reject,
        settled: false,
      };
      const conn = this.conn;
      if (conn?.phase === "connected") {
        this.sendPublish(conn, publish);
      } else if (this.settings.maxQueued === 0) {
        return reject(new ClarionError("disconnected", "not connected"));
      } else if (
        this.queue.length >= this.settings.maxQueued ||
        this.queuedBytes + publish.bytes > this.settings.maxQueuedBytes
      ) {
        return reject(new ClarionError("queue_full", "the publish queue is full"));
      } else {
        this.queue.push(publish);
        this.queuedBytes += publish.bytes;
      }
      if (this.settings.publishTimeout > 0) {
        publish.timer = setTimeout(() => this.publishTimedOut(publish), this.settings.publishTimeout);
      }
    });
  }

  /** Round trip to the server in ms; rejects at once with `disconnected` when not connected. */
  ping(): Promise<number> {
    if (this.stateValue === "closed") {
      return Promise.reject(new ClarionError("closed", "the client is closed"));
    }
    const conn = this.conn;
    if (this.stateValue !== "connected" || !conn) {
      return Promise.reject(new ClarionError("disconnected", "not connected"));
    }
    if (conn.transport === "sse") {
      return Promise.reject(new ClarionError("unsupported", "ping needs the WebSocket transport"));
    }
    return new Promise((resolve, reject) => {
      this.command(conn, '{"type":"ping"', { kind: "ping", sent: now(), resolve, reject });
    });
  }

  /** Stops for good (section 2): everything pending is rejected with `closed`. */
  close(): void {
    if (this.stateValue === "closed") return;
    this.stateValue = "closed";
    this.unhook?.();
    clearTimeout(this.retryTimer);
    this.stopProbe();
    const conn = this.conn;
    this.conn = undefined;
    if (conn) {
      conn.clearTimers();
      conn.stream?.close();
      if (conn.socket) closeGracefully(conn.socket);
      this.settlePending(conn, "closed", "the client is closed");
    }
    for (const sub of this.subs.values()) sub.stateValue = "unsubscribed";
    this.subs.clear();
    this.emit("disconnected", {
      transport: conn?.transport ?? this.transportValue,
      code: 1000,
      reason: "closed by the client",
      willRetry: false,
    });
    this.rejectQueued("closed", "the client is closed");
  }

  /**
   * @internal A wake-up: the network came back (`retry`: then a pending retry happens at once)
   * or the page became visible again. A live connection is probed with a ping.
   */
  wake(retry: boolean): void {
    if (retry && this.retryTimer !== undefined) {
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
      void this.attempt();
      return;
    }
    const conn = this.conn;
    if (this.stateValue !== "connected" || !conn || conn.probing || conn.transport === "sse") return;
    conn.probing = true;
    conn.timers.probe = setTimeout(
      () => this.end(conn, HEARTBEAT_TIMEOUT, "heartbeat timeout", HEARTBEAT_TIMEOUT),
      PROBE_TIMEOUT,
    );
    const done = () => {
      conn.probing = false;
      clearTimeout(conn.timers.probe);
    };
    this.command(conn, '{"type":"ping"', { kind: "ping", sent: now(), resolve: done, reject: done });
  }

  // ---- one attempt (section 4.1) ----

  private async attempt(): Promise<void> {
    this.retryTimer = undefined;
    if (this.stateValue === "closed") return;
    const conn = new Connection(this.transportValue);
    this.conn = conn;
    this.stateValue = "connecting";
    conn.timers.connect = setTimeout(() => this.connectTimedOut(conn), this.settings.connectTimeout);
    let token = this.settings.token;
    if (this.nextToken !== undefined) {
      token = this.nextToken;
      this.nextToken = undefined;
    } else if (this.settings.getToken) {
      try {
        token = await this.callProvider();
      } catch (error) {
        if (this.conn === conn) this.providerFailed(conn, error);
        return;
      }
      if (this.conn !== conn) return;
    }
    conn.token = token;
    conn.phase = "opening";
    if (conn.transport === "sse") {
      this.openSse(conn);
      return;
    }
    let socket: WebSocketLike;
    try {
      const ctor = await resolveWebSocket(this.options.WebSocket);
      if (this.conn !== conn) return;
      socket = open(ctor, this.url, token);
    } catch (error) {
      if (this.conn !== conn) return;
      // No WebSocket in this runtime, or the constructor refused the URL: retrying cannot help.
      this.emit("error", { code: "unsupported", message: String(error) });
      this.end(conn, 1006, String(error), undefined, true);
      return;
    }
    conn.socket = socket;
    socket.onopen = () => this.opened(conn);
    socket.onmessage = (event) => this.received(conn, event.data);
    socket.onerror = (event) => {
      conn.status ??= upgradeStatus(event);
    };
    socket.onclose = (event) => this.end(conn, event.code, event.reason);
    onPing(socket, () => {
      conn.lastHeard = now();
    });
  }

  /** The provider's token, bounded by `connectTimeout`. */
  private callProvider(): Promise<string> {
    const provider = this.settings.getToken as () => Promise<string>;
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error("the token provider timed out")),
        this.settings.connectTimeout,
      );
      Promise.resolve()
        .then(provider)
        .then(
          (token) => {
            clearTimeout(timer);
            if (typeof token === "string") resolve(token);
            else reject(new TypeError("the token provider did not return a string"));
          },
          (error: unknown) => {
            clearTimeout(timer);
            reject(error);
          },
        );
    });
  }

  private providerFailed(conn: Connection, error: unknown): void {
    this.emit("error", { code: "token_provider", message: errorMessage(error) });
    this.end(conn, 1006, "token provider failed");
  }

  private connectTimedOut(conn: Connection): void {
    if (this.conn !== conn) return;
    if (conn.phase === "token") {
      this.providerFailed(conn, new Error("the token provider timed out"));
    } else {
      this.end(conn, 1006, "connect timeout", 1000);
    }
  }

  /** Step 5: `hello`, the subscribes, then the queued publishes, without waiting. */
  private opened(conn: Connection): void {
    if (this.conn !== conn) return;
    conn.phase = "open";
    conn.lastHeard = now();
    this.command(conn, head({ type: "hello", heartbeat: this.settings.heartbeat }), { kind: "hello" });
    for (const sub of this.subs.values()) this.sendSubscribe(conn, sub);
    this.flushQueue(conn);
  }

  /** Step 6: the `hello` ack (or an old server's `unknown_type`). */
  private helloAnswered(conn: Connection, message: ServerMessage, ok: boolean): void {
    clearTimeout(conn.timers.connect);
    conn.phase = "connected";
    conn.connectedAt = now();
    conn.lastHeard = conn.connectedAt;
    const heartbeat = ok && isCount(message.heartbeat) ? message.heartbeat : 0;
    const expiresIn = ok && isCount(message.expires_in) ? message.expires_in * 1000 : undefined;
    // Publishes made since the socket opened, before those made from the listeners below.
    this.flushQueue(conn);
    this.stateValue = "connected";
    this.emit("connected", connectedEvent("websocket", heartbeat, expiresIn));
    if (this.conn !== conn) return;
    if (heartbeat > 0) this.watchHeartbeat(conn, heartbeat * 1000);
    if (expiresIn !== undefined) this.scheduleRefresh(conn, expiresIn);
  }

  // ---- the SSE fallback (section 15) ----

  /** Opens the stream of every subscription from its position, or connects without one. */
  private openSse(conn: Connection): void {
    conn.stream?.close();
    conn.stream = undefined;
    conn.resumed = new Set();
    if (this.subs.size === 0) {
      // Nothing to stream: publishes need no stream, and a subscribe opens one. A first
      // connection checks the server with an empty publish instead.
      if (conn.phase !== "connected") this.checkServer(conn);
      return;
    }
    const url = new URL(this.http.sse);
    url.searchParams.set("format", "envelope");
    if (this.settings.heartbeat > 0) url.searchParams.set("heartbeat", String(this.settings.heartbeat));
    for (const sub of this.subs.values()) {
      url.searchParams.append("topic", sub.topic);
      if (sub.seq !== undefined && sub.epoch !== undefined) {
        url.searchParams.append("since", `${sub.epoch}:${sub.seq}`);
        conn.resumed.add(sub.topic);
      }
    }
    const stream: StreamHandle = openStream(
      url.toString(),
      conn.token,
      {
        event: (data) => {
          if (conn.stream === stream) this.streamEvent(conn, data);
        },
        heard: () => {
          if (conn.stream === stream) conn.lastHeard = now();
        },
        ended: (reason, status) => {
          if (conn.stream !== stream) return;
          if (status !== undefined) conn.status = status;
          this.end(conn, 1006, reason);
        },
      },
      resolveEventSource(this.options.EventSource),
    );
    conn.stream = stream;
  }

  /** Connects without a stream: the server answers an empty `POST /publish` (section 15). */
  private checkServer(conn: Connection): void {
    const check: StreamHandle = { close: () => {}, seesComments: false };
    conn.stream = check;
    const failed = (reason: string, status?: number) => {
      if (conn.stream !== check) return;
      if (status !== undefined) conn.status = status;
      this.end(conn, 1006, reason);
    };
    checkPublish(this.http.publish, conn.token, this.settings.connectTimeout).then(
      ({ status, error }) => {
        if (conn.stream !== check || this.conn !== conn) return;
        if (status === 202) this.sseConnected(conn, {});
        else failed(`HTTP ${status}: ${error}`, status);
      },
      (error: unknown) => failed(`POST /publish failed: ${String(error)}`),
    );
  }

  /** Reopens the stream with the topics and positions of now, once per turn of the event loop. */
  private reopenSoon(conn: Connection): void {
    if (conn.reopenQueued || conn.phase === "token") return;
    conn.reopenQueued = true;
    queueMicrotask(() => {
      conn.reopenQueued = false;
      if (this.conn !== conn) return;
      for (const sub of this.subs.values()) {
        if (sub.stateValue === "subscribed") conn.quiet.add(sub.topic);
        sub.stateValue = "subscribing";
      }
      clearTimeout(conn.timers.heartbeat);
      this.openSse(conn);
    });
  }

  /** One event of an `/sse?format=envelope` stream: its data is an envelope with a `type`. */
  private streamEvent(conn: Connection, data: string): void {
    if (this.conn !== conn) return;
    let message: ServerMessage;
    try {
      message = JSON.parse(data) as ServerMessage;
    } catch {
      this.emit("error", { code: "protocol", message: "an SSE event that is not JSON" });
      return;
    }
    if (message === null || typeof message !== "object") return;
    switch (message.type) {
      case "session":
        if (conn.phase !== "connected") this.sseConnected(conn, message);
        else if (conn.stream?.seesComments && isCount(message.heartbeat) && message.heartbeat > 0) {
          this.watchHeartbeat(conn, message.heartbeat * 1000);
        }
        return;
      case "subscribed": {
        const sub = typeof message.topic === "string" ? this.subs.get(message.topic) : undefined;
        if (!sub || sub.stateValue !== "subscribing") return;
        const quiet = conn.quiet.delete(sub.topic);
        this.subscribeAcked(sub, conn.resumed.has(sub.topic), message, true, quiet);
        return;
      }
      case "reset":
        return this.resetReceived(message);
      case "close":
        return this.end(conn, isCount(message.code) ? message.code : 1006, String(message.reason ?? ""));
      case "message":
        return this.delivered(conn, message);
      default:
        return;
    }
  }

  /** The stream's `@session` (or, without topics, none needed): as the `hello` ack. */
  private sseConnected(conn: Connection, session: ServerMessage): void {
    clearTimeout(conn.timers.connect);
    conn.phase = "connected";
    conn.connectedAt = now();
    conn.lastHeard = conn.connectedAt;
    const heartbeat = isCount(session.heartbeat) ? session.heartbeat : 0;
    const expiresIn = isCount(session.expires_in) ? session.expires_in * 1000 : undefined;
    this.flushQueue(conn);
    this.stateValue = "connected";
    this.emit("connected", connectedEvent("sse", heartbeat, expiresIn));
    if (this.conn !== conn) return;
    // An EventSource hides comments, so heartbeats cannot be watched there.
    if (heartbeat > 0 && conn.stream?.seesComments) this.watchHeartbeat(conn, heartbeat * 1000);
    if (this.settings.transports.includes("websocket") && this.settings.websocketRetry > 0) {
      this.probeTimer = setTimeout(() => void this.probe(conn), this.probeDelay);
    }
  }

  /**
   * Counts a WebSocket attempt that did not get through (ended before anything came from the
   * server and without a close frame: a refused upgrade, a reset, a timeout) and falls back
   * to SSE after enough of them in a row.
   */
  private countTransport(conn: Connection, code: number): void {
    if (conn.transport === "sse") {
      // An SSE attempt failing too says the server is away, not WebSockets: the next attempt
      // goes back to WebSocket, and one more failure there brings SSE again.
      if (conn.phase !== "connected" && this.settings.transports.includes("websocket")) {
        this.transportValue = "websocket";
        this.wsFailures = (this.wsWorked ? FALLBACK_AFTER_WORKED : FALLBACK_AFTER_NEVER_WORKED) - 1;
      }
      return;
    }
    if (conn.heard || conn.phase === "token" || code !== 1006) return;
    this.wsFailures++;
    const limit = this.wsWorked ? FALLBACK_AFTER_WORKED : FALLBACK_AFTER_NEVER_WORKED;
    if (this.wsFailures >= limit && this.settings.transports.includes("sse")) {
      this.wsFailures = 0;
      this.transportValue = "sse";
      this.probeDelay = this.settings.websocketRetry;
    }
  }

  /**
   * While on SSE: a WebSocket with the connection's token, one `ping` on it. Answered: the
   * client leaves SSE and reconnects over WebSocket at once (resuming). Not: the next probe
   * comes after twice the delay, up to 16 × `websocketRetry`.
   */
  private async probe(conn: Connection): Promise<void> {
    this.probeTimer = undefined;
    if (this.conn !== conn) return;
    let socket: WebSocketLike;
    try {
      socket = open(await resolveWebSocket(this.options.WebSocket), this.url, conn.token);
    } catch {
      return; // no WebSocket in this runtime: stay on SSE
    }
    if (this.conn !== conn) return closeGracefully(socket);
    this.probeSocket = socket;
    const done = (worked: boolean) => {
      if (this.probeSocket !== socket) return;
      this.probeSocket = undefined;
      clearTimeout(timer);
      abandon(socket, 1000, "probe done");
      if (this.conn !== conn) return;
      if (worked) {
        this.transportValue = "websocket";
        this.switching = true;
        this.end(conn, 1000, "WebSocket works again: switching");
      } else {
        const max = PROBE_BACKOFF_MAX * this.settings.websocketRetry;
        this.probeDelay = Math.min(max, this.probeDelay * 2);
        this.probeTimer = setTimeout(() => void this.probe(conn), this.probeDelay);
      }
    };
    const timer = setTimeout(() => done(false), this.settings.connectTimeout);
    socket.onopen = () => socket.send('{"type":"ping","id":1}');
    socket.onmessage = () => done(true);
    socket.onclose = () => done(false);
    socket.onerror = () => {};
  }

  private stopProbe(): void {
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
    const socket = this.probeSocket;
    this.probeSocket = undefined;
    if (socket) abandon(socket, 1000, "probe cancelled");
  }

  // ---- the end of a connection or attempt (section 4.3) ----

  /**
   * Ends `conn` (a no-op for one ended already): settles what it held, then retries or stops.
   * `closeWith`: the code to close the socket with when the client gives up on it; `fatal`:
   * never retry.
   */
  private end(conn: Connection, code: number, reason: string, closeWith?: number, fatal = false): void {
    if (this.conn !== conn) return;
    this.conn = undefined;
    conn.clearTimers();
    this.stopProbe();
    conn.stream?.close();
    if (conn.socket) abandon(conn.socket, closeWith ?? 1000, reason);
    this.countTransport(conn, code);
    this.stateValue = "disconnected";
    // 1: unanswered commands.
    this.settlePending(conn, "disconnected", "the connection ended before the answer");
    // 2: subscriptions go back to subscribing, positions kept.
    for (const sub of this.subs.values()) {
      sub.stateValue = "subscribing";
      sub.pendingId = undefined;
    }
    // 3 and 4: retry or stop.
    const openFor = conn.connectedAt > 0 ? now() - conn.connectedAt : 0;
    const status = conn.status;
    const ended = { transport: conn.transport, code, reason, ...(status === undefined ? {} : { status }) };
    const verdict = fatal ? false : this.shouldRetry(conn, code, status);
    if (typeof verdict === "boolean") {
      this.afterEnd(ended, openFor, verdict);
    } else {
      void verdict.then((retry) => this.afterEnd(ended, openFor, retry));
    }
  }

  /** Section 6: whether to retry; a promise where the token provider decides. */
  private shouldRetry(conn: Connection, code: number, status?: number): boolean | Promise<boolean> {
    const provider = this.settings.getToken !== undefined;
    if (status === 403) return false;
    if (code === 4001) return provider;
    if (code === 4003 || status === 401 || code === 1008) {
      if (!provider) return false;
      return this.callProvider().then(
        (token) => {
          if (token === conn.token) return false;
          this.nextToken = token;
          return true;
        },
        (error: unknown) => {
          if (this.stateValue !== "closed") {
            this.emit("error", { code: "token_provider", message: errorMessage(error) });
          }
          // After 4003 the provider may be down rather than the token wrong; after 1008 only a
          // new token is a reason to come back.
          return code !== 1008;
        },
      );
    }
    return true;
  }

  private afterEnd(
    ended: { transport: Transport; code: number; reason: string; status?: number },
    openFor: number,
    retry: boolean,
  ): void {
    if (this.stateValue === "closed") return; // close() was called meanwhile and said so
    if (!retry) {
      this.stateValue = "closed";
      this.unhook?.();
      this.emit("disconnected", { ...ended, willRetry: false });
      this.rejectQueued("closed", "the client stopped: " + ended.reason);
      return;
    }
    let delay = this.backoff.next(openFor, ended.code);
    if (this.switching) {
      this.switching = false;
      delay = 0;
    }
    this.retryTimer = setTimeout(() => void this.attempt(), delay);
    this.emit("disconnected", { ...ended, willRetry: true, retryIn: Math.round(delay) });
  }

  /** Rejects (or, for unsubscribes, resolves) every command `conn` left unanswered. */
  private settlePending(conn: Connection, code: string, message: string): void {
    const pending = [...conn.pending.values()];
    conn.pending.clear();
    for (const entry of pending) {
      switch (entry.kind) {
        case "publish":
          this.settle(entry.publish, new ClarionError(code, message, true));
          break;
        case "ping":
          entry.reject(new ClarionError(code, message));
          break;
        case "unsubscribe":
          entry.done?.();
          break;
        default:
          break;
      }
    }
  }

  private rejectQueued(code: string, message: string): void {
    const queued = this.queue.splice(0);
    this.queuedBytes = 0;
    for (const publish of queued) this.settle(publish, new ClarionError(code, message, false));
  }

  // ---- sending ----

  /** Sends `commandHead` with the connection's next `id`, waiting for `pending`; the `id`. */
  private command(conn: Connection, commandHead: string, pending: Pending): number {
    const id = conn.nextId++;
    conn.pending.set(id, pending);
    try {
      conn.socket?.send(`${commandHead},"id":${id}}`);
    } catch {
      // The socket is closing: its close event ends the connection and settles this.
    }
    return id;
  }

  private sendSubscribe(conn: Connection, sub: Subscription): void {
    const resumed = sub.seq !== undefined && sub.epoch !== undefined;
    const fields = resumed
      ? { type: "subscribe", topic: sub.topic, since: sub.seq, epoch: sub.epoch }
      : { type: "subscribe", topic: sub.topic };
    sub.pendingId = this.command(conn, head(fields), { kind: "subscribe", sub, resumed });
  }

  private sendPublish(conn: Connection, publish: OutgoingPublish): void {
    if (conn.transport === "sse") {
      publish.sent = { conn, id: 0 };
      const token = conn.token;
      this.httpPublishes = this.httpPublishes.then(async () => {
        if (publish.settled) return; // timed out or closed meanwhile
        await postPublish(this.http.publish, token, publish.topic, publish.json, this.settings.publishTimeout).then(
          (ack) => this.settle(publish, ack),
          (error: ClarionError) => {
            this.settle(publish, error);
            // No answer at all: the server is away (the only sign of it without a stream).
            if (error.code === "disconnected") this.end(conn, 1006, error.message);
          },
        );
      });
      return;
    }
    const id = this.command(conn, publish.head, { kind: "publish", publish });
    publish.sent = { conn, id };
  }

  private flushQueue(conn: Connection): void {
    const queued = this.queue.splice(0);
    this.queuedBytes = 0;
    for (const publish of queued) this.sendPublish(conn, publish);
  }

  private publishTimedOut(publish: OutgoingPublish): void {
    if (publish.settled) return;
    const sent = publish.sent;
    if (sent) {
      sent.conn.pending.delete(sent.id);
    } else {
      const at = this.queue.indexOf(publish);
      if (at >= 0) {
        this.queue.splice(at, 1);
        this.queuedBytes -= publish.bytes;
      }
    }
    this.settle(publish, new ClarionError("timeout", "no answer within publishTimeout", sent !== undefined));
  }

  private settle(publish: OutgoingPublish, outcome: PublishAck | ClarionError): void {
    if (publish.settled) return;
    publish.settled = true;
    clearTimeout(publish.timer);
    if (outcome instanceof ClarionError) publish.reject(outcome);
    else publish.resolve(outcome);
  }

  // ---- receiving ----

  private received(conn: Connection, data: unknown): void {
    if (this.conn !== conn) return;
    conn.lastHeard = now();
    if (!conn.heard) {
      conn.heard = true;
      this.wsWorked = true;
      this.wsFailures = 0;
    }
    if (typeof data !== "string") {
      this.emit("error", { code: "protocol", message: "a binary message on /ws" });
      return;
    }
    let message: ServerMessage;
    try {
      message = JSON.parse(data) as ServerMessage;
    } catch {
      this.emit("error", { code: "protocol", message: "a message that is not JSON" });
      return;
    }
    if (message === null || typeof message !== "object" || Array.isArray(message)) {
      this.emit("error", { code: "protocol", message: "a message that is not a JSON object" });
      return;
    }
    switch (message.type) {
      case "ack":
        return this.answered(conn, message, true);
      case "error":
        return this.answered(conn, message, false);
      case "message":
        return this.delivered(conn, message);
      case "reset":
        return this.resetReceived(message);
      case "unsubscribed":
        return this.endedByServer(message);
      default:
        return; // heartbeat, or a type this client does not know
    }
  }

  private answered(conn: Connection, message: ServerMessage, ok: boolean): void {
    const id = message.id;
    const pending = typeof id === "number" ? conn.pending.get(id) : undefined;
    if (pending === undefined || typeof id !== "number") {
      if (!ok) this.emit("error", { code: String(message.code), message: String(message.message) });
      return;
    }
    conn.pending.delete(id);
    const code = String(message.code);
    const text = String(message.message);
    switch (pending.kind) {
      case "hello":
        return this.helloAnswered(conn, message, ok);
      case "subscribe":
        return this.subscribeAnswered(pending.sub, id, pending.resumed, message, ok);
      case "unsubscribe":
        return pending.done?.();
      case "publish":
        return this.settle(
          pending.publish,
          ok
            ? isCount(message.seq)
              ? { topic: String(message.topic), seq: message.seq }
              : { topic: String(message.topic) }
            : new ClarionError(code, text, false),
        );
      case "ping":
        return ok ? pending.resolve(now() - pending.sent) : pending.reject(new ClarionError(code, text));
      case "refresh":
        return this.refreshAnswered(conn, pending.token, message, ok);
    }
  }

  /** Section 7.3. */
  private subscribeAnswered(
    sub: Subscription,
    id: number,
    resumed: boolean,
    message: ServerMessage,
    ok: boolean,
  ): void {
    if (this.subs.get(sub.topic) !== sub || sub.pendingId !== id) return; // ended meanwhile
    sub.pendingId = undefined;
    this.subscribeAcked(sub, resumed, message, ok, false);
  }

  /** Section 7.3 for an ack matched to `sub`; `quiet`: no `subscribed` event if recovered. */
  private subscribeAcked(
    sub: Subscription,
    resumed: boolean,
    message: ServerMessage,
    ok: boolean,
    quiet: boolean,
  ): void {
    if (!ok) {
      this.fail(sub, String(message.code), String(message.message));
      return;
    }
    const { seq, epoch } = message;
    if (!isCount(seq) || typeof epoch !== "string") {
      this.emit("error", { code: "protocol", message: "a subscribe ack without seq and epoch", topic: sub.topic });
      return;
    }
    const recovered = message.recovered === true;
    if (!(resumed && recovered)) sub.seq = seq;
    sub.epoch = epoch;
    sub.stateValue = "subscribed";
    if (quiet && resumed && recovered) return;
    this.emit("subscribed", { topic: sub.topic, resumed, recovered, seq, epoch });
  }

  /** Section 7.4. */
  private delivered(conn: Connection, message: ServerMessage): void {
    const topic = message.topic;
    const sub = typeof topic === "string" ? this.subs.get(topic) : undefined;
    if (!sub || sub.stateValue !== "subscribed" || sub.seq === undefined) return;
    const seq = message.seq;
    if (!isCount(seq) || seq <= sub.seq) return;
    if (seq > sub.seq + 1) {
      // A gap (the server's `drop` policy): resume from the last one emitted.
      sub.stateValue = "subscribing";
      if (conn.transport === "sse") {
        this.reopenSoon(conn);
        return;
      }
      this.command(conn, head({ type: "unsubscribe", topic: sub.topic }), { kind: "unsubscribe" });
      this.sendSubscribe(conn, sub);
      return;
    }
    sub.seq = seq;
    const data = message.encoding === "base64" ? decodeBase64(String(message.data)) : message.data;
    this.emit("message", { topic: sub.topic, seq, data });
  }

  /** Section 7.5. */
  private resetReceived(message: ServerMessage): void {
    const { topic, seq, epoch } = message;
    const sub = typeof topic === "string" ? this.subs.get(topic) : undefined;
    if (!sub || sub.stateValue !== "subscribed" || !isCount(seq) || typeof epoch !== "string") return;
    const epochChanged = sub.epoch !== epoch;
    if (!epochChanged && (sub.seq === undefined || sub.seq <= seq)) return;
    sub.seq = seq;
    sub.epoch = epoch;
    this.emit("reset", { topic: sub.topic, seq, epoch, epochChanged });
  }

  /** Section 7.6. */
  private endedByServer(message: ServerMessage): void {
    const sub = typeof message.topic === "string" ? this.subs.get(message.topic) : undefined;
    if (sub) this.fail(sub, String(message.code), String(message.message));
  }

  private fail(sub: Subscription, code: string, message: string): void {
    this.subs.delete(sub.topic);
    sub.stateValue = "failed";
    sub.pendingId = undefined;
    this.emit("error", { code, message, topic: sub.topic });
  }

  // ---- liveness (section 10) and refresh (section 9) ----

  /** Abandons the connection when nothing at all arrived for twice the heartbeat interval. */
  private watchHeartbeat(conn: Connection, interval: number): void {
    const limit = 2 * interval;
    const check = (): void => {
      if (this.conn !== conn) return;
      const silent = now() - conn.lastHeard;
      if (silent >= limit) {
        this.end(conn, HEARTBEAT_TIMEOUT, "heartbeat timeout", HEARTBEAT_TIMEOUT);
      } else {
        conn.timers.heartbeat = setTimeout(check, limit - silent);
      }
    };
    conn.timers.heartbeat = setTimeout(check, limit);
  }

  /** Plans the refresh of a connection that the server ends in `expiresIn` ms. */
  private scheduleRefresh(conn: Connection, expiresIn: number): void {
    if (!this.settings.getToken) return;
    conn.expiresAt = now() + expiresIn;
    const delay = expiresIn - Math.min(this.settings.refreshBefore, expiresIn / 2);
    clearTimeout(conn.timers.refresh);
    conn.timers.refresh = setTimeout(() => void this.refresh(conn), delay);
  }

  private async refresh(conn: Connection): Promise<void> {
    if (this.conn !== conn || conn.refreshing) return;
    conn.refreshing = true;
    let token: string;
    try {
      token = await this.callProvider();
    } catch (error) {
      if (this.conn !== conn) return;
      conn.refreshing = false;
      this.emit("error", { code: "token_provider", message: errorMessage(error) });
      this.refreshFailed(conn);
      return;
    }
    if (this.conn !== conn) return;
    this.command(conn, head({ type: "refresh", token }), { kind: "refresh", token });
  }

  private refreshAnswered(conn: Connection, token: string, message: ServerMessage, ok: boolean): void {
    conn.refreshing = false;
    if (ok) {
      conn.token = token;
      if (isCount(message.expires_in)) this.scheduleRefresh(conn, message.expires_in * 1000);
      return;
    }
    this.emit("error", { code: String(message.code), message: String(message.message) });
    this.refreshFailed(conn);
  }

  /** One more try at half the time left, while that is more than 2 s; else 4001 will come. */
  private refreshFailed(conn: Connection): void {
    if (this.conn !== conn || conn.expiresAt === undefined) return;
    const half = (conn.expiresAt - now()) / 2;
    if (half > REFRESH_RETRY_MIN) {
      clearTimeout(conn.timers.refresh);
      conn.timers.refresh = setTimeout(() => void this.refresh(conn), half);
    }
  }

  // ---- events ----

  private emit<K extends EventName>(event: K, payload: EventMap[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        (listener as Listener<K>)(payload);
      } catch (error) {
        // A listener's exception must not break the client's state: report it, uncaught.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}

/** A server message's fields, unchecked. */
interface ServerMessage {
  type?: unknown;
  id?: unknown;
  code?: unknown;
  message?: unknown;
  topic?: unknown;
  seq?: unknown;
  epoch?: unknown;
  data?: unknown;
  encoding?: unknown;
  recovered?: unknown;
  heartbeat?: unknown;
  expires_in?: unknown;
  reason?: unknown;
}

function connectedEvent(transport: Transport, heartbeat: number, expiresIn?: number): ConnectedEvent {
  return expiresIn === undefined ? { transport, heartbeat } : { transport, heartbeat, expiresIn };
}

/** A JSON command without its closing brace, for {@link Client.command} to add the `id`. */
function head(fields: object): string {
  return JSON.stringify(fields).slice(0, -1);
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Bytes of `text` in UTF-8, without encoding it. */
function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      bytes += 4; // a surrogate pair
      i++;
    } else bytes += 3;
  }
  return bytes;
}

function decodeBase64(text: string): Uint8Array {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Closes a socket the application is done with: a 1000 close frame, nothing heard after. */
function closeGracefully(socket: WebSocketLike): void {
  const noop = () => {};
  socket.onopen = noop;
  socket.onmessage = noop;
  socket.onclose = noop;
  socket.onerror = noop;
  try {
    socket.close(1000, "closed by the client");
  } catch {
    // Never opened: nothing to close.
  }
}

/**
 * In a browser: retry at once when the network comes back, and probe the connection when the
 * page becomes visible again or the network comes back (section 10). Returns the unhook.
 */
function hookBrowser(client: Client): (() => void) | undefined {
  const win = (globalThis as { window?: Window }).window;
  const doc = (globalThis as { document?: Document }).document;
  if (!win || typeof win.addEventListener !== "function") return undefined;
  const wake = () => client.wake(true);
  const visible = () => {
    if (doc?.visibilityState === "visible") client.wake(false);
  };
  win.addEventListener("online", wake);
  doc?.addEventListener("visibilitychange", visible);
  return () => {
    win.removeEventListener("online", wake);
    doc?.removeEventListener("visibilitychange", visible);
  };
}
