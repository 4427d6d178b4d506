// A tiny in-process WebSocket server that speaks enough of the Switchboard protocol
// for the client's unit tests. Each test decides how commands are answered.
import { WebSocketServer } from 'ws';
import { once } from 'node:events';

/**
 * @param {(conn: Conn, frame: any) => void} [onCommand]  answers commands; the default
 *   handler answers every command with ok and an empty result (pong for ping).
 */
export async function startServer(onCommand = defaultHandler) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await once(wss, 'listening');
  const server = {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    /** @type {Conn[]} */ conns: [],
    onCommand,
    /** When false, new connections get no welcome (the test sends it). */
    welcome: true,
    async close() {
      for (const c of server.conns) c.ws.terminate();
      await new Promise((resolve) => wss.close(resolve));
    },
  };
  wss.on('connection', (ws, req) => {
    const url = new URL(req.url, 'http://localhost');
    const conn = new Conn(ws, url.searchParams.get('token'), server.conns.length + 1);
    server.conns.push(conn);
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data));
      conn.frames.push(frame);
      server.onCommand(conn, frame);
    });
    if (server.welcome) conn.sendWelcome();
  });
  return server;
}

export class Conn {
  constructor(ws, token, n) {
    this.ws = ws;
    this.token = token;
    this.n = n;
    this.user = token;
    this.client = `c-${n}`;
    /** frames received from the client */
    this.frames = [];
  }
  send(frame) { this.ws.send(JSON.stringify(frame)); }
  sendWelcome(extra = {}) {
    this.send({ type: 'welcome', client: this.client, user: this.user, node: 'n1', ping_interval: 30, ...extra });
  }
  ok(frame, result = {}) { this.send({ id: frame.id, ok: true, result }); }
  fail(frame, code, message = code) { this.send({ id: frame.id, ok: false, error: { code, message } }); }
  close(code, reason) { this.ws.close(code, reason); }
}

export function defaultHandler(conn, frame) {
  if (frame.op === 'ping') conn.send(frame.id === undefined ? { type: 'pong' } : { type: 'pong', id: frame.id });
  else if (frame.op === 'subscribe') conn.ok(frame, { offset: 0, epoch: 'e1', recovered: false, publications: [] });
  else conn.ok(frame, {});
}

/** Polls `predicate` until it returns something truthy. */
export async function waitFor(predicate, { timeout = 3000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
