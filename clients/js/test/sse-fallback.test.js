// The SDK against the real `switchboard` binary behind a proxy that refuses WebSocket
// upgrades (as some corporate proxies do) but passes plain HTTP through, streaming:
// the client falls back to server-sent events, says so in its `state` event, receives
// its channels and personal messages, refuses publish clearly, and resumes with
// Last-Event-ID across a server restart without losing or repeating anything.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import WebSocket from 'ws';
import { Switchboard } from '../switchboard.js';
import { parseEventId, renderEventId, sseUrlFor } from '../sse.js';
import { startServer, waitFor } from '../testing/mock-server.js';
import {
  API_KEY, BASE_CONFIG, apiPublish, mintToken, startSwitchboard, switchboardBin, workDir,
} from '../testing/real-server.js';

const bin = switchboardBin();
const skip = bin ? false : 'no switchboard binary: run `cargo build --bin switchboard` or set SWITCHBOARD_BIN';
const FAST = { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 300 };

/** A proxy to `target()` (host:port) that answers every upgrade 403 and streams the rest. */
function noWebSocketProxy(target) {
  const server = http.createServer((req, res) => {
    const [host, port] = target().split(':');
    const up = http.request({ host, port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', () => { res.destroy(); });
    req.pipe(up);
    res.on('close', () => up.destroy());
  });
  server.on('upgrade', (req, socket) => {
    socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    port: server.address().port,
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); }),
  })));
}

describe('event ids', () => {
  it('read and write every channel position', () => {
    const id = 'chat:lobby:0a1b2c3d:16;user:al:ff:0';
    const p = parseEventId(id);
    assert.deepEqual([...p.keys()], ['chat:lobby', 'user:al']);
    assert.deepEqual(p.get('chat:lobby'), { epoch: '0a1b2c3d', offset: 16 });
    assert.equal(renderEventId(p), id);
    assert.equal(sseUrlFor('wss://x.example/ws').toString(), 'https://x.example/sse');
  });
});

/** A WebSocket whose upgrade is refused: it closes without ever opening. */
class RefusedWebSocket {
  constructor() { setTimeout(() => this.onclose?.({ code: 1006, reason: '' }), 0); }
  close() {}
}

/** A `text/event-stream` response with `text`; it ends after it when `end`, else on abort. */
function eventStream(text, end, signal) {
  const body = new ReadableStream({
    start(ctrl) {
      ctrl.enqueue(new TextEncoder().encode(text));
      if (end) ctrl.close();
      else signal.addEventListener('abort', () => ctrl.error(new DOMException('aborted', 'AbortError')));
    },
  });
  return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
}

const ssePub = (n) => `event: pub\nid: chat:x:e:${n}\ndata: ${JSON.stringify({ type: 'pub', channel: 'chat:x', offset: n, epoch: 'e', data: n })}\n\n`;

describe('recovered publications over server-sent events', () => {
  it('are marked up to the position the recovered event names, live ones are not', async () => {
    const requests = [];
    const fetchImpl = async (url, { headers, signal }) => {
      requests.push({ url, lastEventId: headers['Last-Event-ID'] ?? null });
      if (requests.length === 1) return eventStream(`id: chat:x:e:0\n\n${ssePub(1)}${ssePub(2)}`, true, signal);
      const recovered = JSON.stringify({ channel: 'chat:x', recovered: true, offset: 4, epoch: 'e' });
      return eventStream(`event: recovered\nid: chat:x:e:2\ndata: ${recovered}\n\n${ssePub(3)}${ssePub(4)}${ssePub(5)}`, false, signal);
    };
    const c = new Switchboard('ws://sb.test/ws', {
      token: 't', WebSocket: RefusedWebSocket, fetch: fetchImpl, device: null, minReconnectDelay: 10, maxReconnectDelay: 20,
    });
    const got = [];
    c.subscribe('chat:x', (p) => got.push([p.data, p.recovered === true]));
    try {
      c.connect();
      await waitFor(() => got.length === 5, { what: 'five publications over two streams' });
      assert.deepEqual(got, [[1, false], [2, false], [3, true], [4, true], [5, false]]);
      assert.equal(requests.length, 2);
      assert.equal(requests[0].lastEventId, null);
      assert.equal(parseEventId(requests[1].lastEventId).get('chat:x').offset, 2, 'resumed after 2');
      assert.equal(c.transport, 'sse');
    } finally {
      c.disconnect();
    }
  });
});

describe('back to the WebSocket', () => {
  it('after SSE took over from a WebSocket that could not open, one that opens wins', async () => {
    const server = await startServer();
    let made = 0;
    // The first WebSocket finds the server away (a restart); later ones reach it.
    class ComesBack {
      constructor(url) {
        made++;
        return made === 1 ? new RefusedWebSocket() : new WebSocket(url);
      }
    }
    let aborted = false;
    const fetchImpl = async (_url, { signal }) => {
      signal.addEventListener('abort', () => { aborted = true; });
      return eventStream(': ping\n\n', false, signal);
    };
    const c = new Switchboard(server.url, {
      token: 'alice', WebSocket: ComesBack, fetch: fetchImpl, device: null,
      minReconnectDelay: 10, maxReconnectDelay: 20,
    });
    const transports = [];
    c.on('state', (s, _prev, info) => transports.push(`${s}:${info.transport}`));
    try {
      c.connect();
      await waitFor(() => c.transport === 'websocket' && c.state === 'connected' && server.conns.length >= 2,
        { timeout: 5000, what: 'back on the WebSocket' });
      assert.ok(transports.includes('connected:sse'), `went through SSE: ${transports}`);
      assert.ok(aborted, 'the event stream was closed');
      assert.equal(c.readOnly, false);
    } finally {
      c.disconnect();
      await server.close();
    }
  });
});

describe('server-sent events when the WebSocket is refused', { skip }, () => {
  it('falls back read-only, says so, and resumes across a restart', async () => {
    const CONFIG = `${BASE_CONFIG}
[history]
store = "file"
path = "data/history.db"
`;
    const work = workDir();
    let server = await startSwitchboard(bin, work.dir, CONFIG);
    const proxy = await noWebSocketProxy(() => server.addr);
    const c = new Switchboard(`ws://127.0.0.1:${proxy.port}/ws`, { ...FAST, token: mintToken(bin, 'erin') });
    try {
      const states = [];
      c.on('state', (s, _prev, info) => states.push([s, info.transport, info.readOnly]));
      const got = [];
      const personal = [];
      c.on('pub', (p) => { if (p.channel === 'user:erin') personal.push(p); });
      const subscribed = c.subscribe('chat:sse', (p) => got.push(p));
      c.connect();
      await waitFor(() => c.state === 'connected', { timeout: 10_000, what: 'connected over SSE' });
      assert.equal(c.transport, 'sse');
      assert.equal(c.readOnly, true);
      assert.deepEqual(states.at(-1), ['connected', 'sse', true]);
      const first = await subscribed;
      assert.equal(first.recovered, false);

      await assert.rejects(c.publish('chat:sse', 1), (e) => e.code === 'read_only');
      await assert.rejects(c.presence('chat:sse'), (e) => e.code === 'read_only');

      for (let n = 1; n <= 4; n++) await apiPublish(server, 'chat:sse', { n });
      await apiPublish(server, 'user:erin', { dm: 1 });
      await waitFor(() => got.length === 4 && personal.length === 1, { what: 'the first 4 and a DM' });

      // The server restarts; what is published meanwhile is recovered on reconnect.
      const dropped = new Promise((resolve) => c.on('disconnect', (d) => d.reconnect && resolve(d)));
      await server.stop();
      await dropped;
      server = await startSwitchboard(bin, work.dir, CONFIG, server.port)
        .catch(() => startSwitchboard(bin, work.dir, CONFIG));
      for (let n = 5; n <= 8; n++) await apiPublish(server, 'chat:sse', { n });
      await waitFor(() => got.length >= 8, { timeout: 15_000, what: 'the 4 missed, recovered' });
      assert.equal(c.transport, 'sse');
      for (let n = 9; n <= 10; n++) await apiPublish(server, 'chat:sse', { n });
      await waitFor(() => got.length >= 10, { what: 'live again' });
      await new Promise((r) => setTimeout(r, 100)); // room for a duplicate to show up
      assert.deepEqual(got.map((p) => p.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      assert.deepEqual(got.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    } finally {
      c.disconnect();
      await proxy.close();
      await server.stop();
      work.cleanup();
    }
  });

  it('acknowledges its inbox over SSE with POST /sse/ack (PROTOCOL §11)', async () => {
    const CONFIG = BASE_CONFIG.replace(
      'name = "user"\nhistory_size = 100\nhistory_ttl = "10m"',
      'name = "user"\nhistory_size = 100\nhistory_ttl = "10m"\ninbox = true',
    );
    const work = workDir();
    const server = await startSwitchboard(bin, work.dir, CONFIG);
    const proxy = await noWebSocketProxy(() => server.addr);
    const c = new Switchboard(`ws://127.0.0.1:${proxy.port}/ws`, {
      ...FAST, token: mintToken(bin, 'gail'), device: 'kiosk',
    });
    try {
      const got = [];
      c.on('pub', (p) => { if (p.channel === 'user:gail') got.push(p); });
      c.connect();
      await waitFor(() => c.state === 'connected', { timeout: 10_000, what: 'connected over SSE' });
      assert.equal(c.transport, 'sse');
      for (let n = 1; n <= 3; n++) await apiPublish(server, 'user:gail', { n });
      await waitFor(() => got.length === 3, { what: 'three inbox publications' });
      assert.deepEqual(await c.ack('user:gail', 2), { acked: 2 });
      assert.deepEqual(await c.ack('user:gail', 1), { acked: 2 }, 'cursors only move forward');
      await assert.rejects(c.ack('user:gail', 99), (e) => e.code === 'bad_request');
      const res = await fetch(`http://${server.addr}/api/inbox/gail`, {
        headers: { Authorization: `Bearer ${API_KEY}` },
      });
      const report = await res.json();
      const kiosk = report.devices.find((d) => d.device === 'kiosk');
      assert.equal(kiosk.acked, 2, JSON.stringify(report));
      assert.equal(kiosk.unread, 1);
    } finally {
      c.disconnect();
      await proxy.close();
      await server.stop();
      work.cleanup();
    }
  });

  it('uses the WebSocket when it opens, and never SSE with the option off', async () => {
    const work = workDir();
    const server = await startSwitchboard(bin, work.dir, BASE_CONFIG);
    const direct = new Switchboard(server.ws, { ...FAST, token: mintToken(bin, 'finn') });
    const proxy = await noWebSocketProxy(() => server.addr);
    const off = new Switchboard(`ws://127.0.0.1:${proxy.port}/ws`, { ...FAST, sse: false, token: mintToken(bin, 'gus') });
    try {
      direct.connect();
      await waitFor(() => direct.state === 'connected', { what: 'connected' });
      assert.equal(direct.transport, 'websocket');
      assert.equal(direct.readOnly, false);
      let attempts = 0;
      off.on('disconnect', () => { attempts++; });
      off.connect();
      await waitFor(() => attempts >= 3, { what: 'three refused attempts' });
      assert.equal(off.transport, 'websocket');
      assert.notEqual(off.state, 'connected');
    } finally {
      direct.disconnect();
      off.disconnect();
      await proxy.close();
      await server.stop();
      work.cleanup();
    }
  });
});
