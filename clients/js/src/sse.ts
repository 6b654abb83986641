// The fallback transport (docs/clients.md, section 15): the server's `/sse?format=envelope`
// stream, read with the browser's `EventSource` or, where there is none (Node 20), with `fetch`
// and a streaming body parsed here; publishes go by HTTP `POST /publish`.

import { ClarionError, type EventSourceConstructor, type EventSourceLike, type PublishAck } from "./types.js";

/** What a stream tells the client. */
export interface StreamHandlers {
  /** One event's data: with `format=envelope`, every event is unnamed and its data an envelope. */
  event(data: string): void;
  /** Bytes arrived (comment heartbeats included, where the reader sees them). */
  heard(): void;
  /** The stream failed or ended; `status` when the reader saw a refusal's HTTP status. */
  ended(reason: string, status?: number): void;
}

/** An open stream. */
export interface StreamHandle {
  close(): void;
  /** Whether comments (`: heartbeat`) reach {@link StreamHandlers.heard}: not with `EventSource`. */
  readonly seesComments: boolean;
}

/** The HTTP endpoints beside a `/ws` URL: its path with the last `/ws` replaced. */
export function endpoints(wsUrl: string): { sse: string; publish: string } {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.search = "";
  url.hash = "";
  const base = url.pathname.replace(/\/ws\/?$/, "").replace(/\/$/, "");
  url.pathname = `${base}/sse`;
  const sse = url.toString();
  url.pathname = `${base}/publish`;
  return { sse, publish: url.toString() };
}

/** The `EventSource` to use: the one given, else the global one, else none (use `fetch`). */
export function resolveEventSource(given?: EventSourceConstructor): EventSourceConstructor | undefined {
  return given ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
}

/**
 * Opens `url` (an `/sse` URL with its query) with `EventSource` when given one (the token then
 * goes in the query: it cannot send headers), else with `fetch` (`Authorization: Bearer`).
 */
export function openStream(
  url: string,
  token: string | undefined,
  handlers: StreamHandlers,
  EventSource?: EventSourceConstructor,
): StreamHandle {
  return EventSource ? withEventSource(EventSource, url, token, handlers) : withFetch(url, token, handlers);
}

function withEventSource(
  ctor: EventSourceConstructor,
  url: string,
  token: string | undefined,
  handlers: StreamHandlers,
): StreamHandle {
  const full = new URL(url);
  if (token !== undefined) full.searchParams.set("token", token);
  const source: EventSourceLike = new ctor(full.toString());
  let open = true;
  const close = () => {
    open = false;
    source.close();
  };
  source.addEventListener("message", (event) => {
    if (!open) return;
    handlers.heard();
    handlers.event(String((event as { data?: unknown }).data));
  });
  // A native EventSource reconnects by itself; the client reconnects instead (with its own
  // positions, backoff and fallback rules), so any error ends this stream.
  source.onerror = () => {
    if (!open) return;
    close();
    handlers.ended("the stream failed or ended");
  };
  return { close, seesComments: false };
}

function withFetch(url: string, token: string | undefined, handlers: StreamHandlers): StreamHandle {
  const abort = new AbortController();
  let open = true;
  const ended = (reason: string, status?: number) => {
    if (!open) return;
    open = false;
    abort.abort();
    handlers.ended(reason, status);
  };
  const headers: Record<string, string> = { accept: "text/event-stream" };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  void (async () => {
    const response = await fetch(url, { headers, signal: abort.signal, cache: "no-store" });
    if (!response.ok || !response.body) {
      const body = await response.text().catch(() => "");
      return ended(`HTTP ${response.status}: ${errorText(body)}`, response.status);
    }
    const parser = new SseParser(handlers);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (!open) return;
      if (done) return ended("the stream ended");
      handlers.heard();
      parser.push(value);
    }
  })().catch((error: unknown) => ended(`the stream failed: ${String(error)}`));
  return {
    close: () => {
      open = false;
      abort.abort();
    },
    seesComments: true,
  };
}

/** The `error` of a JSON `{"error":…}` body, else the body. */
function errorText(body: string): string {
  try {
    const parsed = JSON.parse(body) as { error?: unknown };
    if (typeof parsed.error === "string") return parsed.error;
  } catch {
    // Not JSON: the body as it is.
  }
  return body.slice(0, 200);
}

/** The text/event-stream format (WHATWG HTML, "Parsing an event stream"), fields the client uses. */
export class SseParser {
  private buffered = "";
  private name = "";
  private data: string[] = [];
  private readonly handlers: Pick<StreamHandlers, "event">;

  constructor(handlers: Pick<StreamHandlers, "event">) {
    this.handlers = handlers;
  }

  push(text: string): void {
    this.buffered += text;
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffered);
      // A lone `\r` at the end may be the first half of `\r\n`: wait for more.
      if (!match || (match[0] === "\r" && match.index === this.buffered.length - 1)) return;
      const line = this.buffered.slice(0, match.index);
      this.buffered = this.buffered.slice(match.index + match[0].length);
      this.line(line);
    }
  }

  private line(line: string): void {
    if (line === "") {
      // Only unnamed events (`message`): with `format=envelope` the server names none.
      if (this.data.length > 0 && (this.name === "" || this.name === "message")) {
        this.handlers.event(this.data.join("\n"));
      }
      this.name = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return; // a comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.name = value;
    else if (field === "data") this.data.push(value);
    // `id` and `retry` serve a native EventSource's own reconnects, which the client replaces.
  }
}

/** The error code of a refused `POST /publish`, from its status and message. */
function publishErrorCode(status: number, message: string): string {
  if (status === 401) return "unauthorized";
  if (status === 403) return "forbidden";
  if (status === 400) return /topic/i.test(message) ? "invalid_topic" : "bad_request";
  if (status === 503 && /topics/i.test(message)) return "too_many_topics";
  if (status === 503 || status === 429) return "unavailable";
  return "bad_request";
}

/** A `POST /publish` of `body` with the client's token: its status and body (`timeout` ms; 0: none). */
async function post(
  url: string,
  token: string | undefined,
  body: string,
  timeout: number,
): Promise<{ status: number; body: string }> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const signal = timeout > 0 ? AbortSignal.timeout(timeout) : undefined;
  const response = await fetch(url, { method: "POST", headers, body, ...(signal ? { signal } : {}) });
  return { status: response.status, body: await response.text() };
}

/**
 * The server's answer to an empty `POST /publish` (`[]`, which publishes nothing): how a client
 * on SSE without topics, so without a stream, knows the server is there and takes its token.
 * Rejects when no answer came.
 */
export async function checkPublish(
  url: string,
  token: string | undefined,
  timeout: number,
): Promise<{ status: number; error: string }> {
  const { status, body } = await post(url, token, "[]", timeout);
  return { status, error: status === 202 ? "" : errorText(body) };
}

/**
 * `POST /publish` of one item (`json`: the data, encoded) with the client's token, given up
 * after `timeout` ms (0: never) so that one request without an answer cannot hold up the next.
 */
export async function postPublish(
  url: string,
  token: string | undefined,
  topic: string,
  json: string,
  timeout: number,
): Promise<PublishAck> {
  let answer: { status: number; body: string };
  try {
    answer = await post(url, token, `[{"topic":${JSON.stringify(topic)},"data":${json}}]`, timeout);
  } catch (error) {
    // The request may have reached the server before the failure.
    throw new ClarionError("disconnected", `POST /publish failed: ${String(error)}`, true);
  }
  if (answer.status !== 202) {
    const message = errorText(answer.body);
    throw new ClarionError(publishErrorCode(answer.status, message), message, false);
  }
  const result = (JSON.parse(answer.body) as { results?: { topic?: unknown; seq?: unknown }[] }).results?.[0];
  const seq = result?.seq;
  return typeof seq === "number" ? { topic, seq } : { topic };
}
