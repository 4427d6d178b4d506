// Server-sent events (PROTOCOL §11) in a real headless Chromium: a bare `EventSource`
// on /sse, and the JS SDK served at /sdk/switchboard.js falling back to /sse when the
// WebSocket cannot open. Both across a server restart (file history store): the browser
// resumes from where it was (the EventSource sends Last-Event-ID by itself), with nothing
// missed and nothing twice. Run through scripts/e2e.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  BASE_CONFIG, apiPublish, mintToken, startSwitchboard, workDir,
} from '../../clients/js/testing/real-server.js';
import { bin, blockWebSocket, gate, launch, waitPresent } from './harness.mjs';

const CONFIG = `${BASE_CONFIG}
[history]
store = "file"
path = "data/history.db"
`;

let browser;

before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

/** The same server again on its port (a page's origin must not change). */
async function restart(server, dir) {
  await server.stop();
  return startSwitchboard(bin(), dir, CONFIG, server.port);
}

/** What `window[name]` holds on the page once `predicate(window[name])` is true. */
async function waitIn(page, name, predicate) {
  await page.waitForFunction(
    ([n, p]) => new Function('v', `return (${p})(v)`)(window[n]),
    [name, predicate.toString()],
  );
  return page.evaluate((n) => window[n], name);
}

test('a bare EventSource receives publications and resumes after a restart with its own Last-Event-ID', async () => {
  const work = workDir();
  let server = await startSwitchboard(bin(), work.dir, CONFIG);
  const page = await browser.context.newPage();
  try {
    const sse = await gate(page, '/sse');
    await page.goto(server.http + '/health'); // any page of the gateway's origin
    await page.evaluate((token) => {
      window.pubs = [];
      window.recovered = [];
      window.opens = 0;
      const es = new EventSource('/sse?channel=chat:es&token=' + encodeURIComponent(token));
      es.addEventListener('pub', (e) => {
        const f = JSON.parse(e.data);
        window.pubs.push({ channel: f.channel, offset: f.offset, data: f.data, id: e.lastEventId });
      });
      es.addEventListener('recovered', (e) => window.recovered.push({ ...JSON.parse(e.data), id: e.lastEventId }));
      es.addEventListener('open', () => { window.opens++; });
    }, mintToken(bin(), 'ivy'));
    await waitPresent(server, 'chat:es', 'ivy');

    for (let n = 1; n <= 4; n++) await apiPublish(server, 'chat:es', { n });
    await apiPublish(server, 'user:ivy', { dm: 1 });
    await waitIn(page, 'pubs', (p) => p.length === 5);

    // Away: the server restarts, and what is published meanwhile waits in its history.
    sse.hold();
    server = await restart(server, work.dir);
    for (let n = 5; n <= 8; n++) await apiPublish(server, 'chat:es', { n });
    await apiPublish(server, 'user:ivy', { dm: 2 });
    sse.release();
    await waitIn(page, 'pubs', (p) => p.length === 10);
    for (let n = 9; n <= 10; n++) await apiPublish(server, 'chat:es', { n });
    const pubs = await waitIn(page, 'pubs', (p) => p.length === 12);

    // The stream is ordered: a duplicate of the recovered ones would have come before 9.
    const chat = pubs.filter((p) => p.channel === 'chat:es');
    assert.deepEqual(chat.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(chat.map((p) => p.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(pubs.filter((p) => p.channel === 'user:ivy').map((p) => p.data.dm), [1, 2]);
    assert.equal(await page.evaluate(() => window.opens), 2, 'one EventSource, reconnected once');

    // The one reconnect resumed from the last id the browser saw, which the browser sent
    // itself (Chromium adds Last-Event-ID below what a route sees): the server answers
    // `recovered` only to a stream that names where it stood, and its id is that position.
    assert.equal(sse.requests.length, 2);
    const recovered = await page.evaluate(() => window.recovered);
    const byChannel = Object.fromEntries(recovered.map((r) => [r.channel, r]));
    assert.equal(byChannel['chat:es']?.recovered, true, JSON.stringify(recovered));
    assert.equal(byChannel['chat:es'].offset, 8, 'the replay ends at 8');
    assert.equal(byChannel['user:ivy']?.recovered, true, JSON.stringify(recovered));
    const before = pubs[4].id; // the last event before the restart
    assert.match(before, /(^|;)chat:es:[^:;]+:4(;|$)/);
    assert.match(before, /(^|;)user:ivy:[^:;]+:1(;|$)/);
    assert.match(byChannel['chat:es'].id, /(^|;)chat:es:[^:;]+:4(;|$)/, 'resumed after 4');
    assert.match(byChannel['user:ivy'].id, /(^|;)user:ivy:[^:;]+:1(;|$)/, 'resumed after the first DM');
  } finally {
    await page.close();
    await server.stop();
    work.cleanup();
  }
});

test('the JS SDK in Chromium falls back to SSE when the WebSocket is blocked, and resumes across a restart', async () => {
  const work = workDir();
  let server = await startSwitchboard(bin(), work.dir, CONFIG);
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  try {
    await blockWebSocket(page);
    const sse = await gate(page, '/sse');
    await page.goto(server.http + '/health');
    await page.evaluate(async (token) => {
      // The SDK as the gateway serves it, as browser ES modules (it imports ./sse.js).
      const { Switchboard } = await import('/sdk/switchboard.js');
      const sb = new Switchboard('/ws', { token, device: null, minReconnectDelay: 200, maxReconnectDelay: 1000 });
      window.sb = sb;
      window.states = [];
      window.got = [];
      sb.on('state', (s, _prev, info) => window.states.push([s, info.transport, info.readOnly]));
      sb.subscribe('chat:fb', (p) => window.got.push({ offset: p.offset, n: p.data.n, recovered: p.recovered === true }));
      sb.connect();
    }, mintToken(bin(), 'jo'));
    await page.waitForFunction(() => window.sb.state === 'connected' && window.sb.position('chat:fb') !== null);
    assert.equal(await page.evaluate(() => window.sb.transport), 'sse');
    assert.deepEqual(await page.evaluate(() => window.states.at(-1)), ['connected', 'sse', true]);
    assert.equal(
      await page.evaluate(() => window.sb.publish('chat:fb', { n: 0 }).then(() => 'published', (e) => e.code)),
      'read_only',
    );

    for (let n = 1; n <= 3; n++) await apiPublish(server, 'chat:fb', { n });
    await waitIn(page, 'got', (g) => g.length === 3);

    sse.hold();
    server = await restart(server, work.dir);
    for (let n = 4; n <= 6; n++) await apiPublish(server, 'chat:fb', { n });
    sse.release();
    await waitIn(page, 'got', (g) => g.length === 6);
    await apiPublish(server, 'chat:fb', { n: 7 });
    const got = await waitIn(page, 'got', (g) => g.length === 7);

    assert.deepEqual(got.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(got.map((p) => p.n), [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(got.map((p) => p.recovered), [false, false, false, true, true, true, false],
      'the ones missed while away are marked recovered');
    assert.equal(sse.requests.at(-1).lastEventId?.includes('chat:fb:'), true, 'the SDK resumed with Last-Event-ID');
    assert.match(sse.requests.at(-1).lastEventId, /(^|;)chat:fb:[^:;]+:3(;|$)/);
    const states = await page.evaluate(() => window.states);
    assert.ok(!states.some(([s, transport]) => s === 'connected' && transport === 'websocket'), JSON.stringify(states));
    assert.deepEqual(states.at(-1), ['connected', 'sse', true]);
    assert.deepEqual(errors, [], 'no uncaught errors on the page');
  } finally {
    await page.evaluate(() => window.sb?.disconnect()).catch(() => {});
    await page.close();
    await server.stop();
    work.cleanup();
  }
});
