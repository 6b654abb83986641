// @clarion/client: the TypeScript client of the Clarion push server (docs/clients.md).

import { Client } from "./client.js";
import type { Options } from "./types.js";

export { Client, Subscription } from "./client.js";
export { ClarionError } from "./types.js";
export type {
  BackoffOptions,
  ClientState,
  ConnectedEvent,
  DisconnectedEvent,
  ErrorEvent,
  EventSourceConstructor,
  EventSourceLike,
  EventMap,
  EventName,
  MessageEvent,
  Options,
  Position,
  PublishAck,
  ResetEvent,
  SubscribedEvent,
  SubscriptionState,
  Transport,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";

/**
 * Connects to a Clarion server's `/ws` (`ws:` or `wss:` URL) and keeps connecting: returns at
 * once, throws TypeError only for a bad URL or option.
 */
export function connect(url: string, options?: Options): Client {
  return new Client(url, options);
}
