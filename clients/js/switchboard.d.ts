// Type declarations for switchboard.js (Switchboard wire protocol v1).

export interface StreamPosition {
  offset: number;
  epoch: string;
}

export interface Publication<T = unknown> {
  type: 'pub';
  channel: string;
  offset?: number;
  epoch?: string;
  data: T;
  /** Present for publications made by a client. */
  from?: string;
  /** True for a publication missed while away and replayed by recovery on (re)subscribe. */
  recovered?: boolean;
  /** On publications of this device's inbox: acknowledges up to this one (PROTOCOL §10). */
  ack?: () => Promise<AckResult>;
}

export interface AckResult {
  /** Where the device's cursor stands now (it only moves forward). */
  acked: number;
}

/** The welcome's `inbox` object, kept current by the client as publications and acks go. */
export interface InboxState {
  channel: string;
  offset: number;
  epoch: string;
  acked: number;
  unread: number;
}

export interface SubscribeResult {
  /** The channel's latest offset (0 before its first publication). */
  offset: number;
  epoch: string;
  /** True when every publication after `since` was still stored and is in `publications`. */
  recovered: boolean;
  publications: Array<Omit<Publication, 'type' | 'channel'> & Partial<Pick<Publication, 'channel'>>>;
}

export interface PresenceClient {
  user: string;
  client: string;
  info: unknown;
  node: string;
}

export interface PresenceResult {
  clients: PresenceClient[];
}

export interface PublishResult {
  offset: number;
  epoch: string;
}

export interface HistoryResult {
  publications: Array<Omit<Publication, 'type' | 'channel'>>;
  offset?: number;
  epoch?: string;
}

export interface WelcomeFrame {
  type: 'welcome';
  client: string;
  user: string;
  node: string;
  /** Seconds; fractions allowed. */
  ping_interval: number;
  /** For a connection with a `device`, when the `user` namespace is an inbox. */
  inbox?: InboxState;
}

export interface JoinFrame {
  type: 'join';
  channel: string;
  user: string;
  client: string;
  info?: unknown;
}

export interface LeaveFrame {
  type: 'leave';
  channel: string;
  user: string;
  client: string;
}

/**
 * What came before `offset` in `epoch` and was not yet delivered cannot be (the broker
 * lost it, or it is past the channel's history); delivery goes on after `offset`.
 */
export interface LostFrame {
  type: 'lost';
  channel: string;
  epoch: string;
  offset: number;
}

export interface DisconnectEvent {
  /** The WebSocket close code (or the server's `disconnect` frame's code when the close had none). */
  code: number;
  reason: string;
  /** Whether the client will reconnect on its own. */
  reconnect: boolean;
  /** Milliseconds until the next attempt, when reconnecting. */
  delay?: number;
}

export type State = 'disconnected' | 'connecting' | 'connected' | 'reconnecting';

export type ErrorCode =
  | 'bad_request' | 'unauthorized' | 'forbidden' | 'not_found' | 'limit_exceeded'
  | 'rate_limited' | 'too_large' | 'internal'
  // raised by the client itself
  | 'timeout' | 'disconnected' | 'unsubscribed' | 'transport' | 'token' | 'bad_frame';

export class SwitchboardError extends Error {
  constructor(code: ErrorCode | string, message?: string);
  readonly code: ErrorCode | string;
  /** Set on subscription errors. */
  channel?: string;
}

/** The subset of the WebSocket API the client needs (browsers' WebSocket, the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onopen: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface SwitchboardOptions {
  /** Connection token (JWT); sent as the `token` query parameter. */
  token?: string;
  /** Called for a token before each (re)connect (the first one too, unless `token` is given). */
  getToken?: () => string | Promise<string>;
  /** WebSocket implementation; defaults to `globalThis.WebSocket`. On Node 20 pass `ws`. */
  WebSocket?: WebSocketConstructor | unknown;
  /** Milliseconds before a command without a reply rejects with code `timeout`. Default 10000. */
  timeout?: number;
  /** Reconnect back-off: first delay in ms (doubles each attempt, with jitter). Default 500. */
  minReconnectDelay?: number;
  /** Reconnect back-off ceiling in ms. Default 20000. */
  maxReconnectDelay?: number;
  /** Ping when the connection has been quiet for `ping_interval`; reconnect without a pong. Default true. */
  heartbeat?: boolean;
  /**
   * This device's stable id (`[A-Za-z0-9_-]{1,64}`) for the inbox's per-device acks. Browsers:
   * defaults to one kept in localStorage (`switchboard.device`). Node: pass one. `null`: none.
   */
  device?: string | null;
  /** Ack each inbox publication once its handler returned (or its promise resolved). Default true. */
  autoAck?: boolean;
  /**
   * When the WebSocket cannot open (closed before its welcome), fall back to server-sent
   * events on `/sse`: receive only (publish, presence, history, ping and refresh reject
   * with code `read_only`), with the same recovery. Default true.
   */
  sse?: boolean;
  /** The `/sse` URL; default: `url` with `ws(s):` → `http(s):` and `/ws` → `/sse`. */
  sseUrl?: string;
  /** fetch implementation for the event stream; defaults to `globalThis.fetch`. */
  fetch?: typeof fetch;
}

export type Transport = 'websocket' | 'sse';

/** Third argument of the `state` event: which transport the client uses. */
export interface StateInfo {
  transport: Transport;
  /** True over server-sent events: publish through your backend. */
  readOnly: boolean;
}

export interface SwitchboardEvents {
  welcome: (frame: WelcomeFrame) => void;
  /** Every publication the client receives: subscribed channels and its personal `user:<id>` channel. */
  pub: (pub: Publication) => void;
  join: (frame: JoinFrame) => void;
  leave: (frame: LeaveFrame) => void;
  /** A range of a subscribed channel that will never arrive (see LostFrame). */
  lost: (frame: LostFrame) => void;
  disconnect: (ev: DisconnectEvent) => void;
  state: (state: State, previous: State, info: StateInfo) => void;
  /** What came before `offset` in `epoch` and was not delivered cannot be (server-sent events). */
  lost: (frame: LostFrame) => void;
  error: (err: Error) => void;
  /** A subscribe (or a resubscribe after a reconnect) succeeded. */
  subscribed: (ev: SubscribeResult & { channel: string }) => void;
  /** The inbox's unread count changed. */
  unread: (unread: number) => void;
}

export class Switchboard {
  constructor(url: string, options?: SwitchboardOptions);

  readonly url: string;
  readonly state: State;
  /** The transport of the current (or last) connection. */
  readonly transport: Transport;
  /** True while connected over server-sent events (receive only). */
  readonly readOnly: boolean;
  /** From the latest welcome. */
  client: string | null;
  user: string | null;
  node: string | null;
  /** This connection's device id, if any. */
  readonly device: string | null;
  /** The inbox of this device, from the welcome, kept current. */
  inbox: InboxState | null;
  /** Inbox publications this device has not acknowledged (0 without an inbox). */
  readonly unread: number;

  /** Opens the connection and keeps it open, reconnecting with back-off, until `disconnect()`. */
  connect(): void;
  /** Closes the connection and stops reconnecting; subscriptions are kept for the next `connect()`. */
  disconnect(code?: number, reason?: string): void;

  on<E extends keyof SwitchboardEvents>(event: E, fn: SwitchboardEvents[E]): () => void;
  off<E extends keyof SwitchboardEvents>(event: E, fn: SwitchboardEvents[E]): void;

  /**
   * Subscribes and remembers the channel's position; after a reconnect it subscribes again
   * with `since`, so missed publications are replayed to `onPublication`.
   */
  subscribe<T = unknown>(
    channel: string,
    onPublication?: (pub: Publication<T>) => void | Promise<void>,
    options?: { since?: StreamPosition },
  ): Promise<SubscribeResult>;
  unsubscribe(channel: string): Promise<void>;
  /** With `idempotencyKey`, a retry within the server's window answers the first result. */
  publish(
    channel: string,
    data: unknown,
    options?: { idempotencyKey?: string },
  ): Promise<PublishResult>;
  presence(channel: string): Promise<PresenceResult>;
  history(channel: string, options?: { since?: StreamPosition; limit?: number }): Promise<HistoryResult>;
  refresh(token: string): Promise<unknown>;
  /** This device has handled its inbox `channel` up to `offset`. */
  ack(channel: string, offset: number): Promise<AckResult>;
  /** Resolves with the round-trip time in milliseconds. */
  ping(): Promise<number>;
  /** The last position seen in a subscribed channel. */
  position(channel: string): StreamPosition | null;
}

export default Switchboard;
