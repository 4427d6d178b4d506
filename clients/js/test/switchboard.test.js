import { describe, it, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Switchboard, SwitchboardError } from '../switchboard.js';
import { startServer, defaultHandler, waitFor, sleep } from '../testing/mock-server.js';

const FAST = { WebSocket, minReconnectDelay: 10, maxReconnectDelay: 50 };

let server;
let clients;

function client(options = {}) {
  const c = new Switchboard(server.url, { token: 'alice', ...FAST, ...options });
  clients.push(c);
  return c;
}

async function connected(c) {
  if (c.state !== 'connected') await new Promise((resolve) => c.on('welcome', resolve));
  return c;
}

beforeEach(async () => {
  server = await startServer();
  clients = [];
});

afterEach(async () => {
  for (const c of clients) c.disconnect();
  await server.close();
});

describe('connecting', () => {
  it('sends the token as ?token= and reports welcome and state', async () => {
    const c = client({ token: 'a.b/c+d' });
    const states = [];
    c.on('state', (s) => states.push(s));
    const welcome = new Promise((resolve) => c.on('welcome', resolve));
    c.connect();
    const frame = await welcome;
    assert.equal(server.conns[0].token, 'a.b/c+d');
    assert.equal(frame.user, 'a.b/c+d');
    assert.equal(c.client, 'c-1');
    assert.equal(c.state, 'connected');
    assert.deepEqual(states, ['connecting', 'connected']);
  });

  it('asks getToken for the token', async () => {
    let calls = 0;
    const c = client({ token: undefined, getToken: async () => `tok${++calls}` });
    c.connect();
    await connected(c);
    assert.equal(server.conns[0].token, 'tok1');
  });

  it('needs a WebSocket implementation', { skip: typeof globalThis.WebSocket === 'function' }, () => {
    assert.throws(() => new Switchboard(server.url, { token: 't' }), TypeError);
  });
});

describe('commands', () => {
  it('gives commands increasing integer ids and matches replies by id, in any order', async () => {
    const held = [];
    server.onCommand = (conn, frame) => {
      if (frame.op === 'publish') {
        held.push(frame);
        if (held.length === 3) {
          // answer in reverse order
          for (const f of held.reverse()) conn.ok(f, { offset: f.data.n, epoch: 'e1' });
        }
      } else defaultHandler(conn, frame);
    };
    const c = client();
    c.connect();
    await connected(c);
    const results = await Promise.all([1, 2, 3].map((n) => c.publish('chat:lobby', { n })));
    assert.deepEqual(results.map((r) => r.offset), [1, 2, 3]);
    const ids = server.conns[0].frames.map((f) => f.id);
    assert.ok(ids.every(Number.isInteger), 'integer ids');
    assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'increasing ids');
    assert.equal(new Set(ids).size, ids.length, 'distinct ids');
    assert.deepEqual(server.conns[0].frames[0], { op: 'publish', channel: 'chat:lobby', data: { n: 1 }, id: ids[0] });
  });

  it('rejects on ok:false with an Error carrying .code', async () => {
    server.onCommand = (conn, frame) => conn.fail(frame, 'forbidden', 'clients may not publish here');
    const c = client();
    c.connect();
    await connected(c);
    await assert.rejects(c.publish('news', { x: 1 }), (err) => {
      assert.ok(err instanceof Error);
      assert.ok(err instanceof SwitchboardError);
      assert.equal(err.code, 'forbidden');
      assert.equal(err.message, 'clients may not publish here');
      return true;
    });
  });

  it('sends presence, history and refresh with their fields', async () => {
    server.onCommand = (conn, frame) => {
      if (frame.op === 'presence') conn.ok(frame, { clients: [{ user: 'alice', client: 'c-1', info: {}, node: 'n1' }] });
      else if (frame.op === 'history') conn.ok(frame, { publications: [{ offset: 5, epoch: 'e1', data: 1 }], offset: 5, epoch: 'e1' });
      else defaultHandler(conn, frame);
    };
    const c = client();
    c.connect();
    await connected(c);
    const p = await c.presence('chat:lobby');
    assert.equal(p.clients[0].user, 'alice');
    const h = await c.history('chat:lobby', { since: { offset: 4, epoch: 'e1' }, limit: 10 });
    assert.equal(h.publications[0].offset, 5);
    await c.refresh('alice-2');
    const [, hist, refresh] = server.conns[0].frames;
    assert.deepEqual(hist, { op: 'history', channel: 'chat:lobby', since: { offset: 4, epoch: 'e1' }, limit: 10, id: hist.id });
    assert.deepEqual(refresh, { op: 'refresh', token: 'alice-2', id: refresh.id });
  });

  it('ping resolves on the pong that carries its id', async () => {
    const c = client();
    c.connect();
    await connected(c);
    const rtt = await c.ping();
    assert.equal(typeof rtt, 'number');
    assert.equal(server.conns[0].frames[0].op, 'ping');
    assert.equal(typeof server.conns[0].frames[0].id, 'number');
  });

  it('queues commands made before the connection is up', async () => {
    const c = client();
    const p = c.publish('chat:lobby', { early: true });
    c.connect();
    await p;
    assert.deepEqual(server.conns[0].frames.map((f) => f.op), ['publish']);
  });

  it('rejects with code timeout when no reply comes', async () => {
    server.onCommand = () => {};
    const c = client({ timeout: 100 });
    c.connect();
    await connected(c);
    await assert.rejects(c.presence('chat:lobby'), { code: 'timeout' });
  });

  it('rejects commands in flight when the connection drops', async () => {
    server.onCommand = (conn) => conn.ws.terminate();
    const c = client();
    c.connect();
    await connected(c);
    await assert.rejects(c.publish('chat:lobby', {}), { code: 'disconnected' });
  });

  it('reports an ok:false without a usable id as an error event', async () => {
    const c = client();
    const errors = [];
    c.on('error', (e) => errors.push(e));
    c.connect();
    await connected(c);
    server.conns[0].send({ ok: false, error: { code: 'bad_request', message: 'not JSON' } });
    await waitFor(() => errors.length, { what: 'error event' });
    assert.equal(errors[0].code, 'bad_request');
  });
});

describe('subscriptions and events', () => {
  it('delivers publications to the subscriber and to pub listeners, personal channel included', async () => {
    const c = client();
    const got = [];
    const all = [];
    c.on('pub', (p) => all.push(p.channel));
    c.connect();
    await connected(c);
    const result = await c.subscribe('chat:lobby', (p) => got.push(p.data.text));
    assert.equal(result.epoch, 'e1');
    const conn = server.conns[0];
    conn.send({ type: 'pub', channel: 'chat:lobby', offset: 1, epoch: 'e1', data: { text: 'hi' }, from: 'bob' });
    conn.send({ type: 'pub', channel: 'user:alice', offset: 1, epoch: 'u1', data: { text: 'dm' } });
    await waitFor(() => all.length === 2, { what: 'two publications' });
    assert.deepEqual(got, ['hi']);
    assert.deepEqual(all, ['chat:lobby', 'user:alice']);
    assert.deepEqual(c.position('chat:lobby'), { offset: 1, epoch: 'e1' });
  });

  it('emits join and leave', async () => {
    const c = client();
    const seen = [];
    c.on('join', (f) => seen.push(`join ${f.user}`));
    c.on('leave', (f) => seen.push(`leave ${f.user}`));
    c.connect();
    await connected(c);
    server.conns[0].send({ type: 'join', channel: 'chat:lobby', user: 'bob', client: 'c-9', info: {} });
    server.conns[0].send({ type: 'leave', channel: 'chat:lobby', user: 'bob', client: 'c-9' });
    await waitFor(() => seen.length === 2, { what: 'join and leave' });
    assert.deepEqual(seen, ['join bob', 'leave bob']);
  });

  it('rejects a refused subscribe with its code and forgets the channel', async () => {
    server.onCommand = (conn, frame) =>
      frame.op === 'subscribe' ? conn.fail(frame, 'forbidden') : defaultHandler(conn, frame);
    const c = client();
    c.connect();
    await connected(c);
    await assert.rejects(c.subscribe('secret:x', () => {}), { code: 'forbidden', channel: 'secret:x' });
    assert.equal(c.position('secret:x'), null);
  });

  it('sends a given since on the first subscribe and delivers the replayed publications', async () => {
    server.onCommand = (conn, frame) => {
      if (frame.op === 'subscribe') {
        conn.ok(frame, {
          offset: 7, epoch: 'e1', recovered: true,
          publications: [{ offset: 6, epoch: 'e1', data: 6 }, { offset: 7, epoch: 'e1', data: 7 }],
        });
      } else defaultHandler(conn, frame);
    };
    const c = client();
    c.connect();
    await connected(c);
    const got = [];
    const r = await c.subscribe('chat:lobby', (p) => got.push([p.channel, p.offset]), { since: { offset: 5, epoch: 'e1' } });
    assert.equal(r.recovered, true);
    assert.deepEqual(server.conns[0].frames[0].since, { offset: 5, epoch: 'e1' });
    assert.deepEqual(got, [['chat:lobby', 6], ['chat:lobby', 7]]);
  });
});

describe('reconnecting', () => {
  it('reconnects after a drop and resubscribes with since = the last position seen (recovery)', async () => {
    let epoch = 'e1';
    server.onCommand = (conn, frame) => {
      if (frame.op !== 'subscribe') return defaultHandler(conn, frame);
      if (!frame.since) return conn.ok(frame, { offset: 0, epoch, recovered: false, publications: [] });
      // the replay: 3 and 4 were missed while disconnected; 3 is sent live again too
      conn.ok(frame, {
        offset: 4, epoch, recovered: true,
        publications: [{ offset: 3, epoch, data: 3, from: 'bob' }, { offset: 4, epoch, data: 4, from: 'bob' }],
      });
      conn.send({ type: 'pub', channel: 'chat:lobby', offset: 4, epoch, data: 4 }); // duplicate: skipped
      conn.send({ type: 'pub', channel: 'chat:lobby', offset: 5, epoch, data: 5 });
    };
    const c = client();
    const got = [];
    const disconnects = [];
    c.on('disconnect', (d) => disconnects.push(d));
    c.connect();
    await connected(c);
    const recovered = [];
    await c.subscribe('chat:lobby', (p) => { got.push(p.data); recovered.push(p.recovered === true); });
    const first = server.conns[0];
    first.send({ type: 'pub', channel: 'chat:lobby', offset: 1, epoch, data: 1 });
    first.send({ type: 'pub', channel: 'chat:lobby', offset: 2, epoch, data: 2 });
    await waitFor(() => got.length === 2, { what: 'live publications' });

    first.close(1001, 'going away');
    await waitFor(() => server.conns.length === 2 && got.length === 5, { what: 'reconnect and replay' });
    const resub = server.conns[1].frames.find((f) => f.op === 'subscribe');
    assert.deepEqual(resub.since, { offset: 2, epoch: 'e1' });
    assert.equal(resub.channel, 'chat:lobby');
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
    // the replayed ones say so (a page can mark what was missed), the live ones do not
    assert.deepEqual(recovered, [false, false, true, true, false]);
    assert.equal(disconnects[0].code, 1001);
    assert.equal(disconnects[0].reconnect, true);
    assert.equal(c.state, 'connected');
    assert.deepEqual(c.position('chat:lobby'), { offset: 5, epoch: 'e1' });
  });

  it('waits the reconnect_after_ms a draining server told it, not its own back-off', async () => {
    const c = client({ minReconnectDelay: 5000, maxReconnectDelay: 10000 });
    const disconnects = [];
    c.on('disconnect', (d) => disconnects.push(d));
    c.connect();
    await connected(c);
    const first = server.conns[0];
    first.send({ type: 'disconnect', code: 1001, reason: 'server shutting down', reconnect_after_ms: 40 });
    first.close(1001, 'server shutting down');
    // Its own back-off would wait 2.5 s or more: the server's 40 ms wins.
    await waitFor(() => server.conns.length === 2, { what: 'reconnect after the told wait', timeout: 2000 });
    assert.equal(disconnects[0].code, 1001);
    assert.equal(disconnects[0].reconnect, true);
    assert.equal(disconnects[0].delay, 40);
    // A wait that is not a whole number of ms is ignored (back-off instead).
    await connected(c);
    server.conns[1].send({ type: 'disconnect', code: 1001, reason: 'x', reconnect_after_ms: 'soon' });
    server.conns[1].close(1001, 'x');
    await waitFor(() => disconnects.length === 2, { what: 'second disconnect' });
    assert.ok(disconnects[1].delay >= 2500, `back-off delay ${disconnects[1].delay}`);
  });

  it('holds back live publications that arrive before the resubscribe reply', async () => {
    server.onCommand = (conn, frame) => {
      if (frame.op !== 'subscribe') return defaultHandler(conn, frame);
      if (!frame.since) return conn.ok(frame, { offset: 1, epoch: 'e1', recovered: false, publications: [] });
      conn.send({ type: 'pub', channel: 'chat:lobby', offset: 4, epoch: 'e1', data: 4 }); // live, before the reply
      conn.ok(frame, { offset: 3, epoch: 'e1', recovered: true, publications: [
        { offset: 2, epoch: 'e1', data: 2 }, { offset: 3, epoch: 'e1', data: 3 }] });
    };
    const c = client();
    const got = [];
    c.connect();
    await connected(c);
    await c.subscribe('chat:lobby', (p) => got.push(p.data));
    server.conns[0].ws.terminate();
    await waitFor(() => got.length === 3, { what: 'replay' });
    assert.deepEqual(server.conns[1].frames[0].since, { offset: 1, epoch: 'e1' });
    assert.deepEqual(got, [2, 3, 4]);
  });

  it('starts over when the epoch changed (history lost)', async () => {
    server.onCommand = (conn, frame) => {
      if (frame.op !== 'subscribe') return defaultHandler(conn, frame);
      if (!frame.since) return conn.ok(frame, { offset: 9, epoch: 'e1', recovered: false, publications: [] });
      conn.ok(frame, { offset: 0, epoch: 'e2', recovered: false, publications: [] });
      conn.send({ type: 'pub', channel: 'chat:lobby', offset: 1, epoch: 'e2', data: 'new' });
    };
    const c = client();
    const got = [];
    c.connect();
    await connected(c);
    const first = await c.subscribe('chat:lobby', (p) => got.push(p.data));
    assert.equal(first.offset, 9);
    server.conns[0].ws.terminate();
    await waitFor(() => got.length === 1, { what: 'publication in the new epoch' });
    assert.deepEqual(server.conns[1].frames[0].since, { offset: 9, epoch: 'e1' });
    assert.deepEqual(c.position('chat:lobby'), { offset: 1, epoch: 'e2' });
  });

  it('resubscribes before sending commands queued while disconnected', async () => {
    const c = client();
    c.connect();
    await connected(c);
    await c.subscribe('chat:lobby', () => {});
    server.welcome = false;
    server.conns[0].ws.terminate();
    await waitFor(() => server.conns.length === 2, { what: 'reconnect' });
    const p = c.publish('chat:lobby', { queued: true });
    await sleep(20);
    assert.deepEqual(server.conns[1].frames, [], 'nothing is sent before welcome');
    server.conns[1].sendWelcome();
    await p;
    assert.deepEqual(server.conns[1].frames.map((f) => f.op), ['subscribe', 'publish']);
  });

  it('backs off exponentially between failed attempts', async () => {
    const c = client({ minReconnectDelay: 20, maxReconnectDelay: 1000 });
    const delays = [];
    c.on('disconnect', (d) => delays.push(d.delay));
    server.onCommand = () => {};
    server.welcome = false;
    c.connect();
    for (let i = 1; i <= 4; i++) {
      await waitFor(() => server.conns.length === i, { what: `attempt ${i}` });
      server.conns[i - 1].ws.terminate();
    }
    await waitFor(() => delays.length === 4, { what: 'four disconnects' });
    // attempt n waits in [ceiling/2, ceiling], ceiling = 20 * 2^n
    delays.forEach((d, n) => {
      const ceiling = 20 * 2 ** n;
      assert.ok(d >= ceiling / 2 && d <= ceiling, `delay ${n} = ${d} within [${ceiling / 2}, ${ceiling}]`);
    });
  });

  it('uses a server disconnect frame\'s code and does not reconnect after 4000 (kicked)', async () => {
    const c = client();
    const disconnects = [];
    c.on('disconnect', (d) => disconnects.push(d));
    c.connect();
    await connected(c);
    server.conns[0].send({ type: 'disconnect', code: 4000, reason: 'kicked' });
    server.conns[0].close(4000, 'kicked');
    await waitFor(() => disconnects.length, { what: 'disconnect' });
    await sleep(150);
    assert.equal(server.conns.length, 1, 'no second connection');
    assert.deepEqual(disconnects, [{ code: 4000, reason: 'kicked', reconnect: false }]);
    assert.equal(c.state, 'disconnected');
  });

  it('does not reconnect after 1008 when getToken has no new token', async () => {
    const c = client({ token: undefined, getToken: () => 'same' });
    const disconnects = [];
    c.on('disconnect', (d) => disconnects.push(d));
    c.connect();
    await connected(c);
    server.conns[0].close(1008, 'token expired');
    await waitFor(() => disconnects.length, { what: 'disconnect' });
    await sleep(150);
    assert.equal(server.conns.length, 1);
    assert.equal(disconnects[0].reconnect, false);
  });

  it('reconnects after 4000/1008 when getToken brings a new token', async () => {
    let n = 0;
    const c = client({ token: undefined, getToken: async () => `tok${++n}` });
    c.connect();
    await connected(c);
    server.conns[0].close(1008, 'token expired');
    await waitFor(() => server.conns.length === 2 && c.state === 'connected', { what: 'reconnect' });
    assert.equal(server.conns[1].token, 'tok2');
  });

  it('reconnects with the token from refresh()', async () => {
    const c = client({ token: 'old' });
    c.connect();
    await connected(c);
    await c.refresh('new');
    server.conns[0].close(1011, 'oops');
    await waitFor(() => server.conns.length === 2, { what: 'reconnect' });
    assert.equal(server.conns[1].token, 'new');
  });

  it('stops reconnecting after disconnect()', async () => {
    const c = client();
    c.connect();
    await connected(c);
    c.disconnect();
    assert.equal(c.state, 'disconnected');
    await sleep(100);
    assert.equal(server.conns.length, 1);
  });

  it('drops a silent connection when its heartbeat ping gets no pong', async () => {
    server.onCommand = () => {}; // never answers
    const c = client({ timeout: 100 });
    c.connect();
    await waitFor(() => server.conns.length === 1, { what: 'first connection' });
    server.conns[0].sendWelcome({ ping_interval: 0.05 });
    await waitFor(() => server.conns.length === 2, { what: 'reconnect after missing pong' });
    assert.equal(server.conns[0].frames[0].op, 'ping');
  });
});
