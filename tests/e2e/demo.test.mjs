// End-to-end test of the demo page (crates/switchboard-server/assets/demo.html, built on
// the JS SDK the binary serves at /sdk/switchboard.js) in a real headless Chromium:
// presence, connection state and transport, recovery of what a page missed across a
// server restart, and the server-sent events fallback when the WebSocket is blocked.
// Run through scripts/e2e. Never downloads a browser: it uses Debian's chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OUT, blockWebSocket, gate, launch, startDevServer } from './harness.mjs';

let browser;
let server;
let workDir;

before(async () => {
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'switchboard-e2e-demo-'));
  server = await startDevServer(workDir);
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
});

/** Opens the demo page (`prepare(page)` first) and joins as `name`, once subscribed over `transport`. */
async function join(name, { transport = 'websocket', prepare } = {}) {
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  page.on('console', (m) => {
    // The blocked WebSocket logs its refused handshake: expected there.
    if (m.type() === 'error' && !m.text().includes('websocket-blocked-by-the-test')) {
      console.log(`[${name} console] ${m.text()}`);
    }
  });
  if (prepare) await prepare(page);
  await page.goto(server.http + '/');
  // Every state #status shows, in order (a short one could fall between two polls).
  await page.evaluate(() => {
    const status = document.querySelector('#status');
    window.states = [];
    new MutationObserver(() => {
      if (window.states.at(-1) !== status.dataset.state) window.states.push(status.dataset.state);
    }).observe(status, { attributes: true, attributeFilter: ['data-state'] });
  });
  await page.fill('#name', name);
  await page.click('#join');
  await waitConnected(page, name, transport);
  return { page, errors };
}

async function waitConnected(page, name, transport) {
  await page.waitForFunction(([n, t]) => {
    const s = document.querySelector('#status');
    return s.dataset.state === 'connected' && s.textContent === `connected as ${n}` &&
      document.querySelector('#transport').dataset.transport === t;
  }, [name, transport]);
  // the composer follows the subscribe reply (and stays off over SSE)
  if (transport === 'websocket') await page.waitForSelector('#send:not([disabled])');
}

/** The chat lines as `from: text`, with whether each is marked recovered. */
function lines(page) {
  return page.$$eval('#messages li:not(.system)', (lis) => lis.map((li) => ({
    line: `${li.querySelector('.from').textContent}: ${li.querySelector('.text').textContent}`,
    recovered: li.classList.contains('recovered'),
  })));
}

async function waitLine(page, line) {
  await page.waitForFunction(
    (l) => [...document.querySelectorAll('#messages li:not(.system)')]
      .some((li) => `${li.querySelector('.from').textContent}: ${li.querySelector('.text').textContent}` === l),
    line,
  );
}

async function send(page, text) {
  await page.fill('#message', text);
  await page.click('#send');
  await waitLine(page, `${await page.inputValue('#name')}: ${text}`);
}

async function waitPresence(page, users) {
  const want = [...users].sort();
  try {
    await page.waitForFunction(
      (w) => JSON.stringify([...document.querySelectorAll('#presence li')].map((li) => li.dataset.user).sort()) === JSON.stringify(w),
      want,
    );
  } catch (e) {
    const got = await page.$$eval('#presence li', (lis) => lis.map((li) => li.dataset.user).sort());
    assert.deepEqual(got, want, 'presence list');
    throw e;
  }
}

test('two users chat, and a page recovers what it missed across a server restart', async (t) => {
  const alice = await join('alice');
  const bob = await join('bob');
  // bob's reconnects ask for a token first: holding that request keeps him away.
  const bobToken = await gate(bob.page, '/dev/token');

  await t.test('each page shows both users in #presence and its transport', async () => {
    await waitPresence(alice.page, ['alice', 'bob']);
    await waitPresence(bob.page, ['alice', 'bob']);
    assert.equal(await alice.page.textContent('#transport'), 'WebSocket');
    assert.equal(await alice.page.isHidden('#presence-note'), true);
  });

  const hello = `hello bob <b>&amp; ${Date.now()}</b>`;
  await t.test('a message from alice shows in bob\'s #messages, as text', async () => {
    await send(alice.page, hello);
    await waitLine(bob.page, `alice: ${hello}`);
    assert.equal(await bob.page.locator('#messages b').count(), 0, 'never parsed as HTML');
    assert.equal(await alice.page.inputValue('#message'), '');
    assert.equal(await alice.page.textContent('#error'), '');
    await send(bob.page, 'hi alice!');
    await waitLine(alice.page, 'bob: hi alice!');
    await alice.page.screenshot({ path: path.join(OUT, 'demo.png') });
  });

  await t.test('across a restart: reconnecting, then connected again with nothing twice', async () => {
    bobToken.hold();
    for (const p of [alice.page, bob.page]) await p.evaluate(() => { window.states = []; });
    await server.stop();
    for (const p of [alice.page, bob.page]) {
      await p.waitForFunction(() => window.states.includes('reconnecting'));
      assert.equal(await p.isDisabled('#send'), true, 'no sending while away');
    }
    server = await startDevServer(workDir, server.port);
    await waitConnected(alice.page, 'alice', 'websocket');
    await waitPresence(alice.page, ['alice']);
    // reconnecting, then connecting again (a token, then the WebSocket), then connected
    const states = await alice.page.evaluate(() => window.states);
    assert.equal(states[0], 'reconnecting', JSON.stringify(states));
    assert.equal(states.at(-1), 'connected', JSON.stringify(states));
    assert.ok(states.includes('connecting'), JSON.stringify(states));
    assert.notEqual(await bob.page.getAttribute('#status', 'data-state'), 'connected', 'bob is held back');
    assert.deepEqual((await lines(alice.page)).map((l) => l.line), [`alice: ${hello}`, 'bob: hi alice!']);
  });

  await t.test('what bob missed arrives when he is back, marked recovered', async () => {
    await send(alice.page, 'while you were away (1)');
    await send(alice.page, 'while you were away (2)');
    bobToken.release();
    await waitConnected(bob.page, 'bob', 'websocket');
    await waitLine(bob.page, 'alice: while you were away (2)');
    await waitPresence(bob.page, ['alice', 'bob']);
    await waitPresence(alice.page, ['alice', 'bob']);
    await send(alice.page, 'welcome back');
    await waitLine(bob.page, 'alice: welcome back');
    assert.deepEqual(await lines(bob.page), [
      { line: `alice: ${hello}`, recovered: false },
      { line: 'bob: hi alice!', recovered: false },
      { line: 'alice: while you were away (1)', recovered: true },
      { line: 'alice: while you were away (2)', recovered: true },
      { line: 'alice: welcome back', recovered: false },
    ]);
    // bob's page asked for a token again: the restarted server has a new secret.
    assert.ok(bobToken.requests.length >= 1);
    assert.equal(await bob.page.$$eval('#messages li.system', (l) => l.length), 0, 'no loss notice');
    await bob.page.screenshot({ path: path.join(OUT, 'demo-recovered.png') });
  });

  await t.test('closing bob\'s page drops bob from alice\'s #presence', async () => {
    await bob.page.close();
    await waitPresence(alice.page, ['alice']);
  });

  await alice.page.close();
  assert.deepEqual(alice.errors, [], 'no uncaught errors on alice\'s page');
  assert.deepEqual(bob.errors, [], 'no uncaught errors on bob\'s page');
});

test('with the WebSocket blocked the page falls back to server-sent events, read-only', async () => {
  const dave = await join('dave');
  const carol = await join('carol', { transport: 'sse', prepare: blockWebSocket });
  assert.equal(await carol.page.textContent('#transport'), 'SSE · read-only');
  assert.equal(await carol.page.isDisabled('#send'), true, 'read-only over SSE');
  assert.match(await carol.page.getAttribute('#message', 'placeholder'), /Read-only/);
  assert.equal(await carol.page.isVisible('#presence-note'), true);
  // carol is in the channel: dave's page sees her join, and she gets dave's messages.
  await waitPresence(dave.page, ['carol', 'dave']);
  await send(dave.page, 'can you read me over SSE?');
  await waitLine(carol.page, 'dave: can you read me over SSE?');
  await carol.page.screenshot({ path: path.join(OUT, 'demo-sse.png') });
  await carol.page.close();
  await waitPresence(dave.page, ['dave']);
  await dave.page.close();
  assert.deepEqual(carol.errors, [], 'no uncaught errors on carol\'s page');
  assert.deepEqual(dave.errors, [], 'no uncaught errors on dave\'s page');
});
