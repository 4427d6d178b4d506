// Switchboard client SDK: a dependency-free client for the Switchboard wire protocol
// (shared PROTOCOL.md, v1) for browsers and Node 20+.
//
// Browsers (and Node 22+) use the global WebSocket; on Node 20 pass one in:
//   import WebSocket from 'ws';
//   new Switchboard(url, { token, WebSocket });
//
// When the WebSocket cannot open (a proxy or network that blocks it), the client falls
// back to server-sent events on `/sse` (option `sse`, default on): read-only, it receives
// the same publications with the same recovery, and publish/presence/history/ping/refresh
// reject with code `read_only`. The `state` event says which transport is in use.

import { parseEventId, readEventStream, renderEventId, sseUrlFor } from './sse.js';

/**
 * @typedef {{ offset: number, epoch: string }} StreamPosition
 *
 * @typedef {object} Publication
 * @property {'pub'} type
 * @property {string} channel
 * @property {number} [offset]
 * @property {string} [epoch]
 * @property {*} data
 * @property {string} [from]   present for publications made by a client
 * @property {boolean} [recovered]  true for a publication missed while away and replayed by
 *                                  recovery when the client (re)subscribed
 *
 * @typedef {object} SubscribeResult
 * @property {number} offset      the channel's latest offset (0 before its first publication)
 * @property {string} epoch
 * @property {boolean} recovered  true when every publication after `since` was replayed
 * @property {Publication[]} publications
 *
 * @typedef {'disconnected'|'connecting'|'connected'|'reconnecting'} State
 *
 * @typedef {object} SwitchboardOptions
 * @property {string} [token]               connection token (JWT)
 * @property {() => (string|Promise<string>)} [getToken]  called for a token before each (re)connect
 * @property {*} [WebSocket]                WebSocket implementation (default: globalThis.WebSocket)
 * @property {number} [timeout]             ms before a command without a reply rejects (default 10000)
 * @property {number} [minReconnectDelay]   ms (default 500)
 * @property {number} [maxReconnectDelay]   ms (default 20000)
 * @property {boolean} [heartbeat]          send an application ping when the connection has been
 *                                          quiet for ping_interval, and reconnect if it gets no pong
 *                                          (default true)
 * @property {string|null} [device]         this device's stable id (`[A-Za-z0-9_-]{1,64}`) for the
 *                                          inbox's per-device acknowledgements (PROTOCOL §10). In
 *                                          browsers it defaults to one kept in localStorage
 *                                          (`switchboard.device`); in Node pass one. null: none.
 * @property {boolean} [autoAck]            ack each inbox publication once its handler returned (or
 *                                          its promise resolved) without throwing (default true);
 *                                          false: call `pub.ack()` / `ack()` yourself
 * @property {boolean} [sse]                fall back to server-sent events (read-only) when the
 *                                          WebSocket cannot open (default true)
 * @property {string} [sseUrl]              the `/sse` URL (default: `url` with `/ws` → `/sse`)
 * @property {typeof fetch} [fetch]         fetch implementation for SSE (default: globalThis.fetch)
 *
 * @typedef {'websocket'|'sse'} Transport
 * @typedef {{ transport: Transport, readOnly: boolean }} StateInfo  third argument of `state`
 *
 * @typedef {object} InboxState  the welcome's `inbox` object, kept current by the client
 * @property {string} channel
 * @property {number} offset
 * @property {string} epoch
 * @property {number} acked
 * @property {number} unread
 */

const DEVICE_KEY = 'switchboard.device';
const DEVICE_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** The browser's stable device id (created once in localStorage), or null outside one. */
function storedDevice() {
  let storage;
  try { storage = globalThis.localStorage; } catch { return null; }
  if (!storage) return null;
  try {
    let id = storage.getItem(DEVICE_KEY);
    if (!id || !DEVICE_RE.test(id)) {
      const bytes = new Uint8Array(12);
      globalThis.crypto.getRandomValues(bytes);
      id = 'd-' + [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
      storage.setItem(DEVICE_KEY, id);
    }
    return id;
  } catch {
    return null;
  }
}

/** An error reply from the server (`ok:false`) or a client-side failure. */
export class SwitchboardError extends Error {
  /**
   * @param {string} code  a protocol error code (`forbidden`, `bad_request`, ...) or one of the
   *   client's own: `timeout`, `disconnected`, `unsubscribed`, `transport`, `token`
   * @param {string} [message]
   */
  constructor(code, message) {
    super(message || code);
    this.name = 'SwitchboardError';
    this.code = code;
  }
}

/**
 * The server's `disconnect` frame; `reconnectAfterMs` only when it is a whole number of ms
 * (a drain says when to come back, PROTOCOL §4).
 */
function serverDisconnect(frame) {
  const after = frame.reconnect_after_ms;
  const reconnectAfterMs = Number.isSafeInteger(after) && after >= 0 ? after : undefined;
  return { code: frame.code, reason: frame.reason, reconnectAfterMs };
}

/** Close codes after which the client does not reconnect on its own (kicked, policy). */
const NO_RECONNECT = new Set([4000, 1008]);
const OPEN = 1;

export class Switchboard {
  /**
   * @param {string} url  e.g. `wss://example.com/ws`; the token is added as `?token=`
   * @param {SwitchboardOptions} [options]
   */
  constructor(url, options = {}) {
    this.url = url;
    this._token = options.token ?? null;
    this._getToken = options.getToken ?? null;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('Switchboard: no WebSocket implementation; pass options.WebSocket (e.g. the "ws" package)');
    }
    this._opts = {
      timeout: options.timeout ?? 10_000,
      minReconnectDelay: options.minReconnectDelay ?? 500,
      maxReconnectDelay: options.maxReconnectDelay ?? 20_000,
      heartbeat: options.heartbeat ?? true,
      autoAck: options.autoAck ?? true,
      sse: options.sse ?? true,
    };
    const device = options.device === undefined ? storedDevice() : options.device;
    if (device != null && !DEVICE_RE.test(device)) {
      throw new TypeError('Switchboard: options.device must be 1 to 64 of [A-Za-z0-9_-]');
    }
    /** @type {string|null} */ this.device = device ?? null;
    /** @type {InboxState|null} */ this.inbox = null;
    this._fetch = options.fetch ?? globalThis.fetch;
    this._sseUrl = options.sseUrl ?? null;
    /** @type {Transport} */ this._transport = 'websocket';
    this._preferSse = false;    // the last WebSocket could not open: try SSE next
    this._wsProbe = null;       // on SSE: a WebSocket tried beside it, to go back if it opens
    this._welcomed = false;     // the current WebSocket got its welcome
    this._wsOpened = false;     // the current WebSocket opened
    this._sse = null;           // AbortController of the current event stream
    this._sseId = null;         // last event id seen on a stream
    /** @type {string|null} */ this.client = null;
    /** @type {string|null} */ this.user = null;
    /** @type {string|null} */ this.node = null;

    /** @type {State} */ this._state = 'disconnected';
    this._ws = null;
    this._wanted = false;       // connect() called and not disconnect()
    this._generation = 0;       // bumps on every connect attempt and on disconnect()
    this._attempt = 0;          // reconnect attempts since the last welcome
    this._reconnectTimer = null;
    this._heartbeatTimer = null;
    this._lastFrameAt = 0;
    this._usedToken = null;     // token of the current / last attempt
    this._serverDisconnect = null;
    this._nextId = 1;
    /** @type {Map<number, {frame: object, resolve: Function, reject: Function, timer: any, sent: boolean, queue: boolean, sentAt: number}>} */
    this._pending = new Map();
    /** @type {Map<string, {channel: string, onPublication: Function|null, since: StreamPosition|null, offset: number|null, epoch: string|null, waiters: {resolve: Function, reject: Function}[], inflight: number, buffer: Publication[], replayTo: StreamPosition|null}>} */
    this._subs = new Map();
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /** @returns {State} */
  get state() { return this._state; }

  /** The transport of the current (or last) connection. @returns {Transport} */
  get transport() { return this._transport; }

  /** True while connected over server-sent events: receive only. */
  get readOnly() { return this._transport === 'sse'; }

  // ---- events ---------------------------------------------------------

  /**
   * Listen to `welcome`, `pub`, `join`, `leave`, `disconnect`, `state`, `error`, `subscribed`,
   * `unread` (the inbox's unread count changed).
   * @param {string} event
   * @param {Function} fn
   * @returns {() => void} removes the listener
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  /** @param {string} event @param {Function} fn */
  off(event, fn) { this._listeners.get(event)?.delete(fn); }

  _emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        if (event !== 'error') this._emit('error', err);
      }
    }
  }

  _setState(state) {
    if (state === this._state) return;
    const prev = this._state;
    this._state = state;
    this._emit('state', state, prev, { transport: this._transport, readOnly: this.readOnly });
  }

  // ---- connection -----------------------------------------------------

  /** Opens the connection (and keeps it open, reconnecting with back-off, until disconnect()). */
  connect() {
    if (this._wanted && (this._ws || this._reconnectTimer || this._state === 'connecting')) return;
    this._wanted = true;
    this._attempt = 0;
    this._open(false);
  }

  /**
   * Closes the connection and stops reconnecting. Subscriptions are kept and are
   * resubscribed (with recovery) by the next connect().
   * @param {number} [code]
   * @param {string} [reason]
   */
  disconnect(code = 1000, reason = '') {
    this._wanted = false;
    this._generation++;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._closeSse();
    const ws = this._ws;
    if (ws) {
      this._detach(ws);
      try { ws.close(code, reason); } catch { try { ws.close(); } catch { /* ignore */ } }
    }
    const was = this._state;
    this._closed();
    this._rejectAll(new SwitchboardError('disconnected', 'disconnected by the client'));
    this._setState('disconnected');
    if (was !== 'disconnected') this._emit('disconnect', { code, reason, reconnect: false });
  }

  async _open(refreshToken) {
    const gen = ++this._generation;
    this._reconnectTimer = null;
    this._setState('connecting');
    let token = this._token;
    if (this._getToken && (refreshToken || token == null)) {
      try {
        token = await this._getToken();
      } catch (err) {
        if (gen !== this._generation) return;
        this._emit('error', toError(err, 'token'));
        this._scheduleReconnect(1006, 'getToken failed');
        return;
      }
      if (gen !== this._generation) return;
      if (token != null) this._token = token;
    }
    this._usedToken = token;
    if (this._preferSse && this._sseAvailable()) {
      this._openSse(token);
      return;
    }
    this._transport = 'websocket';
    this._welcomed = false;
    let ws;
    try {
      ws = new this._WebSocket(this._buildUrl(token));
    } catch (err) {
      this._emit('error', toError(err, 'transport'));
      this._scheduleReconnect(1006, 'could not open the WebSocket');
      return;
    }
    this._ws = ws;
    this._serverDisconnect = null;
    this._lastFrameAt = Date.now();
    this._wsOpened = false;
    ws.onopen = () => { if (ws === this._ws) this._wsOpened = true; };
    ws.onmessage = (ev) => this._onMessage(ws, ev.data);
    ws.onerror = (ev) => {
      if (ws !== this._ws) return;
      const msg = ev?.message || ev?.error?.message;
      this._emit('error', new SwitchboardError('transport', msg || 'WebSocket error'));
    };
    ws.onclose = (ev) => this._onClose(ws, ev?.code ?? 1006, ev?.reason ?? '');
  }

  _buildUrl(token) {
    const base = globalThis.location?.href;
    const u = base ? new URL(this.url, base) : new URL(this.url);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    if (u.protocol === 'https:') u.protocol = 'wss:';
    if (token) u.searchParams.set('token', token);
    if (this.device) u.searchParams.set('device', this.device);
    return u.toString();
  }

  _detach(ws) {
    ws.onmessage = null;
    ws.onerror = null;
    ws.onclose = null;
    ws.onopen = null;
    // keep an error listener on Node's ws so a late error is not thrown
    if (typeof ws.on === 'function') { try { ws.on('error', () => {}); } catch { /* ignore */ } }
  }

  /** Clears per-connection state. */
  _closed() {
    this._ws = null;
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
    for (const [id, entry] of this._pending) {
      if (entry.sent) {
        this._pending.delete(id);
        clearTimeout(entry.timer);
        entry.reject(new SwitchboardError('disconnected', `connection closed before the reply to ${entry.frame.op}`));
      }
    }
  }

  _rejectAll(err) {
    for (const entry of this._pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(err);
    }
    this._pending.clear();
    for (const sub of this._subs.values()) {
      for (const w of sub.waiters.splice(0)) w.reject(err);
    }
  }

  /** Forgets the current socket (which may be dead) and handles it as closed. */
  _drop(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    this._detach(ws);
    try {
      if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close();
    } catch { /* ignore */ }
    this._onClose(ws, code, reason, true);
  }

  async _onClose(ws, code, reason, dropped = false) {
    if (ws !== this._ws && !dropped) return;
    // A WebSocket that never opened (its upgrade refused or cut, e.g. by a proxy): the next
    // attempt tries server-sent events.
    if (ws && !this._wsOpened && !this._welcomed && this._sseAvailable()) this._preferSse = true;
    const server = this._serverDisconnect;
    if (server) {
      if (code === 1006 || code === 1005) code = server.code ?? code;
      if (!reason) reason = server.reason ?? '';
    }
    this._closed();
    if (!this._wanted) {
      this._setState('disconnected');
      this._emit('disconnect', { code, reason, reconnect: false });
      return;
    }
    if (NO_RECONNECT.has(code)) {
      let fresh = null;
      if (this._getToken) {
        this._setState('reconnecting');
        const gen = ++this._generation;
        try { fresh = await this._getToken(); } catch (err) { this._emit('error', toError(err, 'token')); }
        if (gen !== this._generation || !this._wanted) return;
      }
      if (fresh == null || fresh === this._usedToken) {
        this._wanted = false;
        this._setState('disconnected');
        this._emit('disconnect', { code, reason, reconnect: false });
        this._rejectAll(new SwitchboardError('disconnected', `connection closed (${code}${reason ? ': ' + reason : ''})`));
        return;
      }
      this._token = fresh;
      this._scheduleReconnect(code, reason, true);
      return;
    }
    this._scheduleReconnect(code, reason, false, server?.reconnectAfterMs);
  }

  /**
   * @param {boolean} [haveFreshToken] the token to use was just got from getToken
   * @param {number} [serverDelay] the draining server's `reconnect_after_ms`: it spread its
   *   clients' returns over its drain, so this wait replaces the back-off for this attempt
   */
  _scheduleReconnect(code, reason, haveFreshToken = false, serverDelay = undefined) {
    if (!this._wanted) return;
    const { minReconnectDelay: min, maxReconnectDelay: max } = this._opts;
    const ceiling = Math.min(max, min * 2 ** this._attempt);
    const delay = serverDelay !== undefined
      ? Math.min(serverDelay, max)
      : Math.round(ceiling / 2 + Math.random() * ceiling / 2); // exponential, with jitter
    this._attempt++;
    this._setState('reconnecting');
    this._emit('disconnect', { code, reason, reconnect: true, delay });
    clearTimeout(this._reconnectTimer);
    const gen = ++this._generation;
    this._reconnectTimer = setTimeout(() => {
      if (gen === this._generation && this._wanted) this._open(!haveFreshToken);
    }, delay);
  }

  // ---- frames ---------------------------------------------------------

  _onMessage(ws, data) {
    if (ws !== this._ws) return;
    this._lastFrameAt = Date.now();
    if (typeof data !== 'string') {
      try { data = new TextDecoder().decode(data); } catch { return; }
    }
    let frame;
    try { frame = JSON.parse(data); } catch {
      this._emit('error', new SwitchboardError('bad_frame', 'the server sent a frame that is not JSON'));
      return;
    }
    if (!frame || typeof frame !== 'object') return;

    if (frame.type === 'pong') {
      if (typeof frame.id === 'number') this._settle(frame.id, true, undefined);
      return;
    }
    if ('ok' in frame && frame.type === undefined) {
      if (typeof frame.id === 'number' && this._pending.has(frame.id)) {
        this._settle(frame.id, frame.ok, frame.ok ? frame.result : frame.error);
      } else if (!frame.ok) {
        this._emit('error', errorFromReply(frame.error));
      }
      return;
    }
    switch (frame.type) {
      case 'welcome': this._onWelcome(frame); break;
      case 'pub': this._onPublication(frame); break;
      case 'join': this._emit('join', frame); break;
      case 'leave': this._emit('leave', frame); break;
      case 'lost': this._onLost(frame); break;
      case 'disconnect': this._serverDisconnect = serverDisconnect(frame); break;
      default: break;
    }
  }

  _onWelcome(frame) {
    this._welcomed = true;
    this._preferSse = false;
    this._transport = 'websocket';
    this.client = frame.client ?? null;
    this.user = frame.user ?? null;
    this.node = frame.node ?? null;
    this.inbox = frame.inbox ? { ...frame.inbox } : null;
    this._attempt = 0;
    // Commands are sent only in state 'connected': switch to it quietly so the
    // resubscriptions and the queued commands go out first, then tell the listeners.
    this._state = 'connected';
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const entry of this._pending.values()) {
      if (!entry.sent && entry.queue) this._transmit(entry);
    }
    this._startHeartbeat(frame.ping_interval);
    this._state = 'connecting';
    this._setState('connected');
    this._emit('welcome', frame);
  }

  _startHeartbeat(pingInterval) {
    clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
    const interval = Number(pingInterval) * 1000;
    if (!this._opts.heartbeat || !(interval > 0)) return;
    let inFlight = false;
    this._heartbeatTimer = setInterval(() => {
      if (inFlight || this._state !== 'connected') return;
      if (Date.now() - this._lastFrameAt < interval) return;
      inFlight = true;
      this.ping().then(
        () => { inFlight = false; },
        (err) => {
          inFlight = false;
          if (err.code === 'timeout' && this._state === 'connected') this._drop(1006, 'no pong from the server');
        },
      );
    }, Math.max(100, interval / 2));
    /** @type {any} */ (this._heartbeatTimer).unref?.(); // Node: do not keep the process alive
  }

  _onPublication(pub) {
    const sub = this._subs.get(pub.channel);
    if (!sub) this._emit('pub', pub);
    else if (sub.inflight) sub.buffer.push(pub);
    else this._deliver(sub, pub);
  }

  /**
   * A range of a channel that cannot be delivered (PROTOCOL §9): delivery goes on after
   * `offset` in `epoch`, so the position moves there (a resubscribe does not ask for the
   * range again), in order with the channel's publications.
   */
  _onLost(frame) {
    const sub = this._subs.get(frame.channel);
    if (sub && sub.inflight) sub.buffer.push(frame);
    else this._deliver(sub, frame);
  }

  /** Delivers one publication (or `lost`) of a subscribed channel, skipping ones already seen. */
  _deliver(sub, pub) {
    if (pub.type === 'lost') {
      if (sub && typeof pub.offset === 'number' &&
          (sub.offset == null || pub.epoch !== sub.epoch || pub.offset > sub.offset)) {
        sub.offset = pub.offset;
        sub.epoch = pub.epoch ?? sub.epoch;
      }
      this._emit('lost', pub);
      return;
    }
    if (typeof pub.offset === 'number') {
      if (sub.offset != null && pub.epoch === sub.epoch && pub.offset <= sub.offset) return;
      sub.offset = pub.offset;
      sub.epoch = pub.epoch ?? sub.epoch;
      // Over SSE the replay comes as ordinary events, up to where `recovered` said.
      const until = sub.replayTo;
      if (until) {
        if (pub.epoch === until.epoch && pub.offset <= until.offset) pub.recovered = true;
        if (pub.epoch !== until.epoch || pub.offset >= until.offset) sub.replayTo = null;
      }
    }
    const inbox = this.inbox && pub.channel === this.inbox.channel && typeof pub.offset === 'number';
    if (inbox) {
      const box = this.inbox;
      if (pub.epoch !== box.epoch) {
        box.epoch = pub.epoch;
        box.acked = 0;
      }
      if (pub.offset > box.offset) box.offset = pub.offset;
      box.unread = Math.max(0, box.offset - box.acked);
      Object.defineProperty(pub, 'ack', { value: () => this.ack(pub.channel, pub.offset), enumerable: false });
      this._emit('unread', box.unread);
    }
    this._emit('pub', pub);
    let handled;
    let ok = true;
    if (sub.onPublication) {
      try { handled = sub.onPublication(pub); } catch (err) { ok = false; this._emit('error', err); }
    }
    if (inbox && ok && this._opts.autoAck) {
      Promise.resolve(handled).then(
        () => this.ack(pub.channel, pub.offset).catch((err) => this._emit('error', err)),
        (err) => this._emit('error', err),
      );
    }
  }

  /**
   * Acknowledges that this device has handled everything of its inbox `channel` up to
   * `offset` (PROTOCOL §10). The server's cursor only moves forward; resolves with where
   * it stands. Needs a `device`.
   * @param {string} channel
   * @param {number} offset
   * @returns {Promise<{acked: number}>}
   */
  async ack(channel, offset) {
    const result = this._transport === 'sse' && this._state === 'connected'
      ? await this._sseAck(channel, offset)
      : await this._command('ack', { channel, offset });
    const box = this.inbox;
    if (box && box.channel === channel && typeof result?.acked === 'number' && result.acked > box.acked) {
      box.acked = result.acked;
      const unread = Math.max(0, box.offset - box.acked);
      if (unread !== box.unread) {
        box.unread = unread;
        this._emit('unread', unread);
      }
    }
    return result;
  }

  /** Over server-sent events an ack is `POST /sse/ack?device=` with the stream's token (§11). */
  async _sseAck(channel, offset) {
    if (!this.device) throw new SwitchboardError('bad_request', 'an ack needs a device (options.device)');
    const u = new URL(this._buildSseUrl(this._usedToken ?? this._token));
    u.pathname = `${u.pathname.replace(/\/$/, '')}/ack`;
    u.searchParams.delete('channel');
    const fetchFn = this._fetch; // called unbound: a browser's fetch refuses another `this`
    const res = await fetchFn(u.toString(), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ channel, offset }),
    });
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    if (!res.ok) throw errorFromReply(body?.error ?? { code: 'transport', message: `ack refused: ${res.status}` });
    return body;
  }

  /** Publications of this device's inbox it has not acknowledged (0 without an inbox). */
  get unread() { return this.inbox?.unread ?? 0; }

  // ---- commands -------------------------------------------------------

  /**
   * Sends a command and resolves with its result. Commands made while not connected wait
   * for the connection (up to the timeout), except those with queue=false.
   */
  _command(op, fields = {}, { queue = true } = {}) {
    return new Promise((resolve, reject) => this._request(op, fields, queue, resolve, reject));
  }

  /**
   * Sends a command; `resolve`/`reject` are called synchronously when the reply frame is
   * handled (before any later frame), which the subscribe bookkeeping relies on.
   */
  _request(op, fields, queue, resolve, reject) {
    if (this._transport === 'sse' && this._state !== 'disconnected') {
      reject(new SwitchboardError('read_only',
        `${op} is not available over server-sent events (the WebSocket could not open): publish through your backend`));
      return;
    }
    const id = this._nextId++;
    const frame = { op, ...fields, id };
    const entry = { frame, resolve, reject, timer: null, sent: false, queue, sentAt: 0 };
    entry.timer = setTimeout(() => {
      this._pending.delete(id);
      reject(new SwitchboardError('timeout', `no reply to ${op} within ${this._opts.timeout} ms`));
    }, this._opts.timeout);
    this._pending.set(id, entry);
    if (this._state === 'connected') this._transmit(entry);
    else if (!queue) this._settle(id, false, { code: 'disconnected', message: 'not connected' });
  }

  _transmit(entry) {
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN) return;
    try {
      ws.send(JSON.stringify(entry.frame));
      entry.sent = true;
      entry.sentAt = Date.now();
    } catch (err) {
      this._emit('error', toError(err, 'transport'));
    }
  }

  _settle(id, ok, value) {
    const entry = this._pending.get(id);
    if (!entry) return;
    this._pending.delete(id);
    clearTimeout(entry.timer);
    if (ok) entry.resolve(value);
    else entry.reject(errorFromReply(value));
  }

  /**
   * Subscribes to a channel. The client remembers the last offset/epoch it saw there, and
   * after a reconnect subscribes again with `since`, so missed publications are replayed
   * (recovery) and reach `onPublication` in order. Subscribing to one's own `user:<id>`
   * channel turns on recovery for the personal inbox.
   * @param {string} channel
   * @param {(pub: Publication) => void} [onPublication]
   * @param {{ since?: StreamPosition }} [options]
   * @returns {Promise<SubscribeResult>}
   */
  subscribe(channel, onPublication, options = {}) {
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = { channel, onPublication: null, since: null, offset: null, epoch: null, waiters: [], inflight: 0, buffer: [], replayTo: null };
      this._subs.set(channel, sub);
    }
    if (onPublication) sub.onPublication = onPublication;
    if (options.since) {
      sub.since = options.since;
      sub.offset = null;
      sub.epoch = null;
    }
    return new Promise((resolve, reject) => {
      sub.waiters.push({ resolve, reject });
      if (this._state === 'connected' && this._transport === 'sse') this._reopenSse();
      else if (this._state === 'connected') this._sendSubscribe(sub);
    });
  }

  _sendSubscribe(sub) {
    const since = sub.offset != null && sub.epoch != null
      ? { offset: sub.offset, epoch: sub.epoch }
      : sub.since;
    const fields = { channel: sub.channel };
    if (since) fields.since = since;
    // Live publications that arrive before the reply are held back, so that the replayed
    // ones (in the reply) are delivered first and in order.
    if (!sub.buffer) sub.buffer = [];
    sub.inflight = (sub.inflight ?? 0) + 1;
    this._request('subscribe', fields, false,
      (result) => {
        if (this._subs.get(sub.channel) !== sub) return;
        sub.inflight--;
        // What a reply carries was missed while away: replayed by recovery.
        for (const p of result?.publications ?? []) {
          this._deliver(sub, { type: 'pub', channel: sub.channel, ...p, recovered: true });
        }
        if (typeof result?.offset === 'number' &&
            (sub.offset == null || result.epoch !== sub.epoch || result.offset > sub.offset)) {
          sub.offset = result.offset;
          sub.epoch = result.epoch ?? null;
        }
        sub.since = null;
        if (!sub.inflight) for (const p of sub.buffer.splice(0)) this._deliver(sub, p);
        this._emit('subscribed', { channel: sub.channel, ...result });
        for (const w of sub.waiters.splice(0)) w.resolve(result);
      },
      (err) => {
        if (this._subs.get(sub.channel) !== sub) return;
        sub.inflight--;
        if (err.code === 'disconnected') {
          // subscribed again, with since, after the reconnect; that replays what is held here
          sub.inflight = 0;
          sub.buffer = [];
          return;
        }
        this._subs.delete(sub.channel);
        err.channel = sub.channel;
        if (sub.waiters.length) for (const w of sub.waiters.splice(0)) w.reject(err);
        else this._emit('error', err);
      },
    );
  }

  /**
   * Leaves a channel (and forgets its position).
   * @param {string} channel
   * @returns {Promise<void>}
   */
  async unsubscribe(channel) {
    const sub = this._subs.get(channel);
    if (sub) {
      this._subs.delete(channel);
      for (const w of sub.waiters.splice(0)) w.reject(new SwitchboardError('unsubscribed', `unsubscribed from ${channel}`));
    }
    if (this._state !== 'connected') return;
    if (this._transport === 'sse') {
      this._reopenSse();
      return;
    }
    await this._command('unsubscribe', { channel }, { queue: false });
  }

  /**
   * Publishes to a channel. With `idempotencyKey` (1–128 printable ASCII characters), a
   * publish retried with the same key within the server's `idempotency_window` answers the
   * first result and publishes nothing, so retrying after a lost reply is safe.
   * @param {string} channel
   * @param {*} data
   * @param {{idempotencyKey?: string}} [options]
   * @returns {Promise<{offset: number, epoch: string}>}
   */
  publish(channel, data, { idempotencyKey } = {}) {
    const fields = { channel, data };
    if (idempotencyKey !== undefined) fields.idempotency_key = idempotencyKey;
    return this._command('publish', fields);
  }

  /**
   * @param {string} channel
   * @returns {Promise<{clients: {user: string, client: string, info: *, node: string}[]}>}
   */
  presence(channel) { return this._command('presence', { channel }); }

  /**
   * @param {string} channel
   * @param {{ since?: StreamPosition, limit?: number }} [options]
   * @returns {Promise<{publications: Publication[], offset?: number, epoch?: string}>}
   */
  history(channel, options = {}) {
    const fields = { channel };
    if (options.since) fields.since = options.since;
    if (options.limit != null) fields.limit = options.limit;
    return this._command('history', fields);
  }

  /**
   * Swaps in a fresh token on the open connection; it is also used for later reconnects.
   * @param {string} token
   * @returns {Promise<*>}
   */
  async refresh(token) {
    const result = await this._command('refresh', { token });
    this._token = token;
    this._usedToken = token;
    return result;
  }

  /**
   * Application-level ping.
   * @returns {Promise<number>} round-trip time in ms
   */
  async ping() {
    const started = Date.now();
    await this._command('ping', {});
    return Date.now() - started;
  }

  // ---- server-sent events (fallback) ------------------------------------

  _sseAvailable() {
    return this._opts.sse && typeof this._fetch === 'function';
  }

  _buildSseUrl(token) {
    const base = globalThis.location?.href;
    const u = this._sseUrl
      ? (base ? new URL(this._sseUrl, base) : new URL(this._sseUrl))
      : sseUrlFor(this.url, base);
    for (const channel of this._subs.keys()) u.searchParams.append('channel', channel);
    if (token) u.searchParams.set('token', token);
    if (this.device) u.searchParams.set('device', this.device);
    return u.toString();
  }

  /** The id that resumes every channel: the last one seen, with the subscriptions' positions. */
  _lastEventId() {
    const positions = parseEventId(this._sseId);
    for (const sub of this._subs.values()) {
      if (sub.offset != null && sub.epoch != null) positions.set(sub.channel, { epoch: sub.epoch, offset: sub.offset });
    }
    return renderEventId(positions);
  }

  _closeSse() {
    const ctrl = this._sse;
    this._sse = null;
    if (ctrl) { try { ctrl.abort(); } catch { /* ignore */ } }
    const probe = this._wsProbe;
    this._wsProbe = null;
    if (probe) { try { probe.close(1000); } catch { /* ignore */ } }
  }

  /**
   * On SSE after a WebSocket that could not open, one WebSocket is tried beside the stream:
   * if it opens, the server was only away (a restart) rather than behind a proxy that refuses
   * upgrades, and the client goes back to the WebSocket, resuming its channels with `since`.
   */
  _probeWebSocket(token) {
    if (this._wsProbe || typeof this._WebSocket !== 'function') return;
    let probe;
    try { probe = new this._WebSocket(this._buildUrl(token)); } catch { return; }
    this._wsProbe = probe;
    const done = (opened) => {
      if (this._wsProbe !== probe) return;
      this._wsProbe = null;
      try { probe.close(1000); } catch { /* ignore */ }
      if (opened && this._transport === 'sse' && this._sse && this._wanted) {
        this._preferSse = false;
        this._closeSse();
        this._open(false);
      }
    };
    probe.onopen = () => done(true);
    probe.onerror = () => {};
    probe.onclose = () => done(false);
  }

  /** A new stream for a changed set of channels, resuming the others where they are. */
  _reopenSse() {
    this._closeSse();
    this._openSse(this._token);
  }

  _openSse(token) {
    const ctrl = new AbortController();
    this._sse = ctrl;
    this._transport = 'sse';
    this._serverDisconnect = null;
    const headers = { Accept: 'text/event-stream' };
    const lastId = this._lastEventId();
    if (lastId) headers['Last-Event-ID'] = lastId;
    let opened = false;
    const url = this._buildSseUrl(token);
    readEventStream(this._fetch, url, headers, ctrl.signal,
      () => {
        if (this._sse !== ctrl) return;
        opened = true;
        this._attempt = 0;
        if (this._preferSse) this._probeWebSocket(token);
        // Commands waiting for the connection cannot be sent over this transport.
        for (const [id, entry] of this._pending) {
          this._pending.delete(id);
          clearTimeout(entry.timer);
          entry.reject(new SwitchboardError('read_only', `${entry.frame.op} is not available over server-sent events`));
        }
        this._setState('connected');
      },
      (ev) => { if (this._sse === ctrl) this._onSseEvent(ev); },
    ).then(
      (end) => {
        if (this._sse !== ctrl) return;
        this._sse = null;
        if (end.status === 200) {
          const d = this._serverDisconnect;
          this._onClose(null, d?.code ?? 1006, d?.reason ?? 'event stream ended', true);
          return;
        }
        const err = errorFromReply(end.error ?? { code: 'transport', message: `event stream refused: ${end.status}` });
        this._emit('error', err);
        const code = end.status === 401 || end.status === 403 ? 1008 : 1006;
        this._onClose(null, code, err.message, true);
      },
      (err) => {
        if (this._sse !== ctrl) return;
        this._sse = null;
        // Not even HTTP got through: the next attempt tries the WebSocket again.
        if (!opened) this._preferSse = false;
        this._onClose(null, 1006, err?.message ?? 'event stream failed', true);
      },
    );
  }

  _onSseEvent({ event, id, data }) {
    if (id != null) this._sseId = id;
    let frame = null;
    if (data) {
      try { frame = JSON.parse(data); } catch {
        this._emit('error', new SwitchboardError('bad_frame', 'the server sent an event that is not JSON'));
        return;
      }
    }
    // The id's first entry is the event's own channel.
    const [first] = parseEventId(id);
    switch (event) {
      case 'pub': this._onPublication(frame); break;
      case 'lost': this._onLost(frame); break;
      case 'recovered': this._sseJoined(frame.channel, frame.recovered, first, frame); break;
      case 'join': this._emit('join', frame); break;
      case 'leave': this._emit('leave', frame); break;
      case 'disconnect': this._serverDisconnect = serverDisconnect(frame); break;
      case 'error': {
        const sub = this._subs.get(frame.channel);
        const err = errorFromReply(frame.error);
        err.channel = frame.channel;
        if (sub) this._subs.delete(frame.channel);
        if (sub?.waiters.length) for (const w of sub.waiters.splice(0)) w.reject(err);
        else this._emit('error', err);
        break;
      }
      case '':
        // An id alone: where a channel starts on a fresh stream.
        if (!data && first) this._sseJoined(first[0], false, first);
        break;
      default: break;
    }
  }

  /**
   * A channel's join on the stream: its position, and its subscribe() resolves. A
   * `recovered` event says where the channel stood at the join (`offset`, `epoch`): the
   * publications up to there that follow are the replay.
   */
  _sseJoined(channel, recovered, first, joined = null) {
    const sub = this._subs.get(channel);
    if (!sub) return;
    sub.replayTo = recovered && typeof joined?.offset === 'number' && typeof joined?.epoch === 'string'
      && (sub.offset == null || joined.epoch !== sub.epoch || joined.offset > sub.offset)
      ? { offset: joined.offset, epoch: joined.epoch }
      : null;
    if (!recovered && first && first[0] === channel) {
      sub.offset = first[1].offset;
      sub.epoch = first[1].epoch;
    }
    sub.since = null;
    const result = { offset: sub.offset ?? 0, epoch: sub.epoch ?? '', recovered: !!recovered, publications: [] };
    this._emit('subscribed', { channel, ...result });
    for (const w of sub.waiters.splice(0)) w.resolve(result);
  }

  /**
   * The last position seen in a subscribed channel, or null.
   * @param {string} channel
   * @returns {StreamPosition|null}
   */
  position(channel) {
    const sub = this._subs.get(channel);
    return sub && sub.offset != null && sub.epoch != null ? { offset: sub.offset, epoch: sub.epoch } : null;
  }
}

function errorFromReply(error) {
  const code = error?.code ?? 'internal';
  const err = new SwitchboardError(code, error?.message || code);
  return err;
}

function toError(err, code) {
  if (err instanceof SwitchboardError) return err;
  const e = new SwitchboardError(code, err?.message ?? String(err));
  e.cause = err;
  return e;
}

export default Switchboard;
