// Compiled (never run) by `npm test`: the published types accept what applications pass, the
// browser's WebSocket and the ws package's alike, and type the events and results.
import { ClarionError, connect, type MessageEvent, type Position } from "@clarion/client";
import WebSocket from "ws";

const node = connect("ws://127.0.0.1:9001/ws", { WebSocket, token: "t" });
const browser = connect("wss://push.example.com/ws", {
  WebSocket: globalThis.WebSocket,
  getToken: async () => "t",
  backoff: { min: 500, max: 10_000, factor: 3, resetAfter: 5000 },
});
node.on("message", (m: MessageEvent) => m.seq + 1);
node.on("disconnected", (e) => (e.willRetry ? e.retryIn : e.code));
node.on("subscribed", (e) => e.resumed && !e.recovered);
node.on("reset", (e) => e.epochChanged);
const sub = browser.subscribe("t", { since: 1, epoch: "e" });
const position: Position | undefined = sub.position;
void position;
void browser.publish("t", { n: 1 }).then(
  (ack) => ack.seq,
  (e: unknown) => e instanceof ClarionError && e.maybeSent,
);
void sub.unsubscribe();
const fallback = connect("wss://push.example.com/ws", {
  transports: ["websocket", "sse"],
  websocketRetry: 30_000,
  EventSource: globalThis.EventSource,
});
fallback.on("connected", (e) => e.transport === "sse");
fallback.on("disconnected", (e) => e.transport === "websocket");
const transport: "websocket" | "sse" = fallback.transport;
void transport;
