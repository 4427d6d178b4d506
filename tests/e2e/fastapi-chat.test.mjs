// End-to-end test of examples/fastapi-chat in a real headless Chromium: the FastAPI app
// (uvicorn) logs two users in with the HttpOnly `sb_token` cookie, their pages connect to
// the real `switchboard` binary through the JS SDK with it, they chat, one is notified by
// the backend through the Python SDK, and the gateway is killed and started again on the
// same port and file store while messages are published: every message is then shown
// once and in order. Run through scripts/e2e (SWITCHBOARD_BIN, PYTHON, CHROMIUM_PATH).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startSwitchboard, switchboardBin, workDir } from '../../clients/js/testing/real-server.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const EXAMPLE = path.join(ROOT, 'examples', 'fastapi-chat');
const OUT = path.join(HERE, 'out');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const PYTHON = process.env.PYTHON || path.join(ROOT, 'target', 'py', 'bin', 'python');
const SECRET = 'fastapi-example-test-secret-0123456789';
const API_KEY = 'fastapi-example-test-key';
// Generous: the machine is shared; every wait below is on a condition.
const TIMEOUT = 30_000;

let work;
let gateway;
let gatewayPort;
let config;
let fastapi;
let browser;

/** A port free now, for the gateway, which must come back on the same one. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** The example's own switchboard.toml, with the test's page origin and secrets. */
function gatewayConfig(origin) {
  const shipped = fs.readFileSync(path.join(EXAMPLE, 'switchboard.toml'), 'utf8');
  const line = /^allowed_origins = .*$/m;
  assert.match(shipped, line, 'examples/fastapi-chat/switchboard.toml sets allowed_origins');
  return shipped.replace(line, `allowed_origins = ["${origin}"]`) +
    `\n[auth]\nhmac_secret = "${SECRET}"\n\n[api]\nkey = "${API_KEY}"\n`;
}

/** uvicorn on port 0; resolves with its URL once it says where it listens. */
function startFastapi(switchboardUrl) {
  const child = spawn(PYTHON, ['-m', 'uvicorn', 'app:app', '--host', '127.0.0.1', '--port', '0', '--no-access-log'], {
    cwd: EXAMPLE,
    env: {
      PATH: process.env.PATH ?? '',
      PYTHONPATH: path.join(ROOT, 'clients', 'python', 'src'),
      PYTHONUNBUFFERED: '1',
      SWITCHBOARD_URL: switchboardUrl,
      SWITCHBOARD_API_KEY: API_KEY,
      SWITCHBOARD_AUTH_HMAC_SECRET: SECRET,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let logs = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => { logs += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`uvicorn did not start within ${TIMEOUT} ms: ${logs}`)); }, TIMEOUT);
    const onExit = (code, sig) => { clearTimeout(timer); reject(new Error(`uvicorn exited (${code ?? sig}) before listening: ${logs}`)); };
    child.once('exit', onExit);
    createInterface({ input: child.stderr }).on('line', (line) => {
      logs += line + '\n';
      const m = /Uvicorn running on (http:\/\/127\.0\.0\.1:\d+)/.exec(line);
      if (!m) return;
      clearTimeout(timer);
      child.off('exit', onExit);
      resolve({ child, url: m[1], logs: () => logs });
    });
  });
}

function stopChild(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => { child.once('exit', () => resolve()); child.kill('SIGTERM'); });
}

before(async () => {
  const bin = switchboardBin();
  assert.ok(bin, 'no switchboard binary: set SWITCHBOARD_BIN (run scripts/e2e)');
  assert.ok(fs.existsSync(PYTHON), `no Python at ${PYTHON}: set PYTHON (run scripts/e2e)`);
  fs.mkdirSync(OUT, { recursive: true });
  work = workDir();
  gatewayPort = await freePort();
  fastapi = await startFastapi(`http://127.0.0.1:${gatewayPort}`);
  config = gatewayConfig(fastapi.url);
  gateway = await startSwitchboard(bin, work.dir, config, gatewayPort);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: TIMEOUT,
  });
});

after(async () => {
  // Kept for a failed run (scripts/e2e prints them then).
  if (fastapi) fs.writeFileSync(path.join(OUT, 'fastapi-chat-uvicorn.log'), fastapi.logs());
  if (gateway) fs.writeFileSync(path.join(OUT, 'fastapi-chat-switchboard.log'), gateway.logs());
  await browser?.close();
  await stopChild(fastapi?.child);
  await gateway?.stop();
  work?.cleanup();
});

/** A user in a browser context of their own (own cookies, own device id), logged in. */
async function login(name) {
  const context = await browser.newContext({ viewport: { width: 900, height: 600 } });
  context.setDefaultTimeout(TIMEOUT);
  const page = await context.newPage();
  const errors = [];
  const sockets = [];
  page.on('pageerror', (e) => errors.push(e));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[${name} console] ${m.text()}`); });
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.goto(fastapi.url + '/');
  await page.fill('#user', name);
  await page.click('#login');
  await page.waitForURL(fastapi.url + '/chat');
  await waitConnected(page, name);
  return { name, context, page, errors, sockets };
}

function waitConnected(page, name) {
  return page.waitForFunction(
    (n) => document.querySelector('#status')?.textContent.startsWith(`connected as ${n}`), name);
}

function lines(page, list) {
  return page.$$eval(`#${list} li`, (lis) => lis.map((li) => li.textContent));
}

function waitLine(page, list, text) {
  return page.waitForFunction(
    ([l, t]) => [...document.querySelectorAll(`#${l} li`)].some((li) => li.textContent === t), [list, text]);
}

/**
 * POST through the user's context (their cookie), sending the same body (so the same
 * idempotency key) again until it is answered 200, as the page itself does.
 */
async function postUntilOk(user, urlPath, body) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    let status = 0;
    try {
      const res = await user.context.request.post(fastapi.url + urlPath, { data: body, failOnStatusCode: false });
      if (res.ok()) return res.json();
      status = res.status();
      assert.ok(status === 503 || status === 429, `${urlPath}: unexpected ${status} ${await res.text()}`);
    } catch (err) {
      if (err instanceof assert.AssertionError) throw err;
    }
    assert.ok(Date.now() < deadline, `${urlPath} not accepted within 60 s (last status ${status})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('two users chat, one is notified, the gateway restarts and nothing is missed', async (t) => {
  const alice = await login('alice');
  const bob = await login('bob');

  await t.test('the token is an HttpOnly cookie the page cannot read, sent to the gateway\'s port', async () => {
    const cookie = (await alice.context.cookies(fastapi.url)).find((c) => c.name === 'sb_token');
    assert.ok(cookie, 'the login set sb_token');
    assert.equal(cookie.httpOnly, true);
    assert.equal(await alice.page.evaluate(() => document.cookie.includes('sb_token')), false);
    // The page connected to the gateway (another port) with no token in the URL: the
    // cookie went with the upgrade.
    assert.ok(alice.sockets.length >= 1);
    for (const url of alice.sockets) {
      assert.ok(url.startsWith(`ws://127.0.0.1:${gatewayPort}/ws`), url);
      assert.ok(!url.includes('token='), url);
    }
  });

  await t.test('each page lists both users in the lobby', async () => {
    for (const u of [alice, bob]) {
      await u.page.waitForFunction(() =>
        ['alice', 'bob'].every((n) => document.querySelector(`#who li[data-user="${n}"]`)));
    }
  });

  await t.test('a message from alice shows on both pages, and bob\'s answer too', async () => {
    const said = `hello bob <b>&amp; ${Date.now()}</b>`;
    await alice.page.fill('#message', said);
    await alice.page.click('#send');
    await waitLine(bob.page, 'messages', `alice: ${said}`);
    await waitLine(alice.page, 'messages', `alice: ${said}`);
    assert.equal(await bob.page.locator('#messages b').count(), 0, 'text is never parsed as HTML');
    await bob.page.fill('#message', 'hi alice!');
    await bob.page.press('#message', 'Enter');
    await waitLine(alice.page, 'messages', 'bob: hi alice!');
    assert.equal(await alice.page.textContent('#error'), '');
  });

  await t.test('a notification from the backend reaches bob only', async () => {
    await alice.page.fill('#notify-user', 'bob');
    await alice.page.fill('#notify-text', 'your order has shipped');
    await alice.page.click('#notify-send');
    await waitLine(bob.page, 'notifications', 'alice: your order has shipped');
    await alice.page.waitForFunction(() => document.querySelector('#notify-text').value === '');
    assert.deepEqual(await lines(alice.page, 'notifications'), []);
    await bob.page.screenshot({ path: path.join(OUT, 'fastapi-chat.png') });
  });

  await t.test('the gateway is killed and restarted while messages are published: each shows once, in order', async () => {
    const N = 30;
    const KILL_AFTER = 10;
    const run = Date.now().toString(36);
    const burst = Array.from({ length: N }, (_, i) => `burst ${String(i + 1).padStart(2, '0')}`);
    let restarted = null;

    const restart = async () => {
      await gateway.kill(); // SIGKILL: nothing is flushed on purpose
      for (const u of [alice, bob]) {
        await u.page.waitForFunction(() => document.querySelector('#status')?.dataset.state !== 'connected');
      }
      // While it is down: a notification from the backend, and a message typed on a page
      // (the page's own retries carry it).
      const note = postUntilOk(alice, '/notify/bob', { text: 'sent while the gateway was down', key: `down-${run}` });
      await bob.page.fill('#message', 'are you there?');
      await bob.page.press('#message', 'Enter');
      gateway = await startSwitchboard(switchboardBin(), work.dir, config, gatewayPort);
      await note;
    };

    for (const [i, text] of burst.entries()) {
      await postUntilOk(alice, '/chat', { text, key: `burst-${run}-${i}` });
      if (i + 1 === KILL_AFTER) {
        restarted = restart();
        restarted.catch(() => {}); // awaited below: not an unhandled rejection meanwhile
      }
    }
    await restarted;

    for (const u of [alice, bob]) {
      await waitConnected(u.page, u.name);
      await u.page.waitForFunction((n) =>
        [...document.querySelectorAll('#messages li')].filter((li) => li.textContent.startsWith('alice: burst ')).length >= n, N);
      await waitLine(u.page, 'messages', 'bob: are you there?');
    }
    await waitLine(bob.page, 'notifications', 'alice: sent while the gateway was down');

    for (const u of [alice, bob]) {
      const shown = await lines(u.page, 'messages');
      assert.deepEqual(shown.filter((l) => l.startsWith('alice: burst ')), burst.map((b) => `alice: ${b}`),
        `${u.name}: every burst message once, in order`);
      assert.equal(shown.filter((l) => l === 'bob: are you there?').length, 1, `${u.name}: bob's message once`);
      const offsets = await u.page.$$eval('#messages li', (lis) => lis.map((li) => Number(li.dataset.offset)));
      offsets.forEach((o, k) => assert.ok(k === 0 || o === offsets[k - 1] + 1, `${u.name}: offsets without gap or repeat: ${offsets}`));
      assert.equal(await u.page.textContent('#error'), '', `${u.name}: no error shown`);
    }
    const notes = await lines(bob.page, 'notifications');
    assert.deepEqual(notes, ['alice: sent while the gateway was down', 'alice: your order has shipped']);
    await alice.page.screenshot({ path: path.join(OUT, 'fastapi-chat-after-restart.png') });
  });

  assert.deepEqual(alice.errors, [], 'no uncaught errors on alice\'s page');
  assert.deepEqual(bob.errors, [], 'no uncaught errors on bob\'s page');
});
