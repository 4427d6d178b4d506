// The SDK against the real `switchboard` binary (not the mock server): a token minted
// by `switchboard token`, subscribe, publications in order, and every publication once
// and in order across a crash and restart of the server with the file store.
import { describe, it, before, after } from 'node:test';
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Switchboard } from '../switchboard.js';
import { waitFor } from '../testing/mock-server.js';
import {
  API_KEY, BASE_CONFIG, apiPublish, mintToken, startSwitchboard, switchboardBin, workDir,
} from '../testing/real-server.js';

const bin = switchboardBin();
const skip = bin ? false : 'no switchboard binary: run `cargo build --bin switchboard` or set SWITCHBOARD_BIN';
const FAST = { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 300 };

describe('against the real server', { skip }, () => {
  let work;
  let server;
  const clients = [];

  before(async () => {
    work = workDir();
    server = await startSwitchboard(bin, work.dir, BASE_CONFIG);
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await server?.stop();
    work?.cleanup();
  });

  function client(user, options = {}) {
    const c = new Switchboard(server.ws, { token: mintToken(bin, user), ...FAST, ...options });
    clients.push(c);
    return c;
  }

  async function connected(c) {
    const welcome = new Promise((resolve) => c.on('welcome', resolve));
    c.connect();
    return welcome;
  }

  it('connects with a token from `switchboard token` and is welcomed as its user', async () => {
    const c = client('alice');
    const welcome = await connected(c);
    assert.equal(welcome.user, 'alice');
    assert.equal(c.user, 'alice');
    assert.match(c.client, /./);
    assert.equal(c.state, 'connected');
  });

  it('receives publications in offset order, each once', async () => {
    const c = client('bob');
    await connected(c);
    const got = [];
    const sub = await c.subscribe('chat:order', (pub) => got.push(pub));
    assert.equal(sub.offset, 0);
    // Published concurrently: the server orders them, the subscriber sees that order.
    const acks = await Promise.all(Array.from({ length: 20 }, (_, n) => apiPublish(server, 'chat:order', { n })));
    await waitFor(() => got.length >= 20, { what: '20 publications' });
    assert.deepEqual(got.map((p) => p.offset), Array.from({ length: 20 }, (_, i) => i + 1));
    const byOffset = new Map(acks.map((a, n) => [a.offset, n]));
    assert.deepEqual(got.map((p) => p.data.n), got.map((p) => byOffset.get(p.offset)));
    assert.deepEqual(c.position('chat:order'), { offset: 20, epoch: acks[0].epoch });
  });

  it('publishes, sees presence and history, and gets personal messages', async () => {
    const c = client('carol');
    const got = [];
    c.on('pub', (p) => { if (p.channel === 'user:carol') got.push(p); });
    await connected(c);
    await c.subscribe('chat:room');
    const ack = await c.publish('chat:room', { text: 'hi' });
    assert.equal(ack.offset, 1);
    const { clients: present } = await c.presence('chat:room');
    assert.deepEqual(present.map((p) => p.user), ['carol']);
    const { publications } = await c.history('chat:room', { limit: 10 });
    assert.deepEqual(publications.map((p) => p.data), [{ text: 'hi' }]);
    await apiPublish(server, 'user:carol', { note: 'for you' });
    await waitFor(() => got.length === 1, { what: 'the personal message' });
    assert.deepEqual(got[0].data, { note: 'for you' });
    assert.ok((await c.ping()) >= 0);
  });
});

describe('across a server restart with the file store', { skip }, () => {
  const CONFIG = `${BASE_CONFIG}
[history]
store = "file"
path = "data/history.db"
sync = "always"
`;

  it('gets 12 of 12 publications once and in order, recovering with since', async () => {
    const work = workDir();
    let server = await startSwitchboard(bin, work.dir, CONFIG);
    // Reconnects wait for this gate (getToken runs before every reconnect), so the
    // publications made while the SDK is away are recovered, not received live.
    let openGate;
    let gate = null;
    const token = mintToken(bin, 'dora');
    const c = new Switchboard(server.ws, {
      ...FAST,
      getToken: () => gate ?? token,
    });
    try {
      const got = [];
      const subscribed = [];
      const states = [];
      c.on('state', (s) => states.push(s));
      c.on('subscribed', (r) => subscribed.push(r));
      await new Promise((resolve) => { c.on('welcome', resolve); c.connect(); });
      await c.subscribe('chat:restart', (p) => got.push(p));

      for (let n = 1; n <= 4; n++) await apiPublish(server, 'chat:restart', { n });
      await waitFor(() => got.length === 4, { what: 'the first 4' });
      const { epoch } = c.position('chat:restart');

      gate = new Promise((resolve) => { openGate = () => resolve(token); });
      const dropped = new Promise((resolve) => c.on('disconnect', (d) => d.reconnect && resolve(d)));
      await server.kill();
      await dropped;

      // Restart on the same data and, when it is still free, the same port;
      // otherwise on a new one the SDK is pointed at.
      server = await startSwitchboard(bin, work.dir, CONFIG, server.port)
        .catch(() => startSwitchboard(bin, work.dir, CONFIG));
      c.url = server.ws;
      for (let n = 5; n <= 8; n++) await apiPublish(server, 'chat:restart', { n });
      assert.equal(got.length, 4, 'nothing arrives while the SDK is away');
      openGate();

      await waitFor(() => subscribed.length === 2, { timeout: 10_000, what: 'the resubscription' });
      assert.equal(subscribed[1].recovered, true, 'subscribe with since recovered what was missed');
      assert.equal(subscribed[1].epoch, epoch, 'the file store kept the stream: same epoch');
      for (let n = 9; n <= 12; n++) await apiPublish(server, 'chat:restart', { n });
      await waitFor(() => got.length >= 12, { what: '12 publications' });
      await new Promise((r) => setTimeout(r, 100)); // room for a duplicate to show up

      assert.deepEqual(got.map((p) => p.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
      assert.deepEqual(got.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
      assert.ok(got.every((p) => p.epoch === epoch));
      assert.ok(states.includes('reconnecting') && states.at(-1) === 'connected', states.join(','));
    } finally {
      c.disconnect();
      await server.stop();
      work.cleanup();
    }
  });
});

describe('the inbox against the real server (per-device acks)', { skip }, () => {
  const CONFIG = BASE_CONFIG.replace(
    'name = "user"\nhistory_size = 100\nhistory_ttl = "10m"',
    'name = "user"\nhistory_size = 100\nhistory_ttl = "10m"\ninbox = true',
  );
  let work;
  let server;
  const clients = [];

  before(async () => {
    work = workDir();
    server = await startSwitchboard(bin, work.dir, CONFIG);
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await server?.stop();
    work?.cleanup();
  });

  async function device(name, options = {}) {
    const c = new Switchboard(server.ws, { token: mintToken(bin, 'carol'), ...FAST, device: name, ...options });
    clients.push(c);
    const welcome = new Promise((resolve) => c.on('welcome', resolve));
    c.connect();
    await welcome;
    return c;
  }

  it('resumes each device after what it acked; auto-ack or pub.ack(); unread', async () => {
    assert.throws(() => new Switchboard(server.ws, { ...FAST, device: 'not ok!' }), TypeError);

    const laptopGot = [];
    let laptop = await device('laptop', { autoAck: false });
    assert.equal(laptop.device, 'laptop');
    assert.deepEqual(
      { acked: laptop.inbox.acked, unread: laptop.unread, channel: laptop.inbox.channel },
      { acked: 0, unread: 0, channel: 'user:carol' },
    );
    await laptop.subscribe('user:carol', (p) => laptopGot.push(p));
    const phoneGot = [];
    const phone = await device('phone');
    await phone.subscribe('user:carol', (p) => phoneGot.push(p));

    await apiPublish(server, 'user:carol', { n: 0 });
    await waitFor(() => laptopGot.length === 1 && phoneGot.length === 1, { what: 'the first publication' });
    assert.equal(laptop.unread, 1, 'not acked yet');
    assert.deepEqual(await laptopGot[0].ack(), { acked: 1 });
    assert.equal(laptop.unread, 0);
    laptop.disconnect();

    for (let n = 1; n <= 5; n++) await apiPublish(server, 'user:carol', { n });
    await waitFor(() => phoneGot.length === 6, { what: 'the phone gets all 6' });
    await waitFor(() => phone.inbox.acked === 6, { what: 'the phone auto-acks each' });
    assert.equal(phone.unread, 0);

    const report = await (await fetch(`${server.http}/api/inbox/carol`, {
      headers: { Authorization: `Bearer ${API_KEY}` },
    })).json();
    assert.equal(report.offset, 6);
    const byDevice = Object.fromEntries(report.devices.map((d) => [d.device, d]));
    assert.deepEqual(byDevice.laptop, { device: 'laptop', acked: 1, unread: 5 });
    assert.deepEqual(byDevice.phone, { device: 'phone', acked: 6, unread: 0 });

    // The laptop comes back as a new client with the same device: the welcome says 5
    // unread, and a subscribe without `since` gets exactly those 5, in order.
    const again = [];
    laptop = await device('laptop', { autoAck: false });
    assert.equal(laptop.unread, 5);
    const result = await laptop.subscribe('user:carol', (p) => again.push(p));
    assert.equal(result.recovered, true);
    assert.deepEqual(again.map((p) => p.data.n), [1, 2, 3, 4, 5]);
    assert.deepEqual(again.map((p) => p.offset), [2, 3, 4, 5, 6]);
    assert.equal(laptop.unread, 5, 'autoAck off: nothing acked by itself');
    assert.deepEqual(await laptop.ack('user:carol', 6), { acked: 6 });
    assert.equal(laptop.unread, 0);
  });
});

function hasCommand(name) {
  try { execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' }); return true; } catch { return false; }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

const noRedis = hasCommand('redis-server') && hasCommand('redis-cli') ? false : 'no redis-server/redis-cli on the PATH';

describe('a range lost on the Redis broker', { skip: skip || noRedis }, () => {
  it("surfaces the server's `lost` frame as a 'lost' event and moves the position past it", async () => {
    const work = workDir();
    const port = await freePort();
    const redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore' });
    const cli = (...args) => execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8' }).trim();
    let server;
    const c = new Switchboard('ws://unused', { ...FAST, token: mintToken(bin, 'lou') });
    try {
      await waitFor(() => { try { return cli('ping') === 'PONG'; } catch { return false; } }, { what: 'redis-server' });
      server = await startSwitchboard(bin, work.dir,
        `${BASE_CONFIG}\n[broker]\nkind = "redis"\nredis_url = "redis://127.0.0.1:${port}"\n`);
      c.url = server.ws;
      const got = [];
      const lost = [];
      c.on('lost', (f) => lost.push(f));
      await new Promise((resolve) => { c.on('welcome', resolve); c.connect(); });
      await c.subscribe('chat:lost', (p) => got.push(p));
      for (let n = 1; n <= 2; n++) await apiPublish(server, 'chat:lost', { n });
      await waitFor(() => got.length === 2, { what: 'the first 2' });
      // Offsets 3 and 4 were assigned but never stored nor sent (what a
      // Redis that lost them looks like): the node finds the hole when 5
      // arrives, cannot fill it from the stream, and says so.
      cli('hincrby', 'sb:{chat:lost}:meta', 'o', '2');
      const five = await apiPublish(server, 'chat:lost', { n: 5 });
      await waitFor(() => lost.length === 1 && got.length === 3, { timeout: 10_000, what: 'lost, then 5' });
      assert.equal(lost[0].type, 'lost');
      assert.equal(lost[0].channel, 'chat:lost');
      assert.equal(lost[0].epoch, five.epoch);
      assert.ok(lost[0].offset >= 4 && lost[0].offset <= 5, JSON.stringify(lost[0]));
      assert.deepEqual(got.map((p) => p.offset), [1, 2, 5]);
      assert.deepEqual(c.position('chat:lost'), { offset: 5, epoch: five.epoch });
    } finally {
      c.disconnect();
      await server?.stop();
      redis.kill('SIGKILL');
      work.cleanup();
    }
  });
});
