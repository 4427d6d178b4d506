// End-to-end test of the admin page (crates/switchboard-server/assets/admin/) in a
// real headless Chromium, against a server of its own started with
// `[admin] enabled = true`. Run through scripts/e2e, which sets SWITCHBOARD_BIN.
//
// With ADMIN_SCREENSHOTS=docs the screenshots replace docs/admin*.png (what
// docs/admin.md shows); otherwise they go to tests/e2e/out/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.SWITCHBOARD_BIN;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SHOTS = process.env.ADMIN_SCREENSHOTS === 'docs'
  ? path.join(HERE, '..', '..', 'docs')
  : path.join(HERE, 'out');
const TIMEOUT = 15_000;
const SECRET = crypto.randomBytes(32).toString('hex');
const API_KEY = crypto.randomBytes(16).toString('hex');

let server;
let base;
let dir;
let context;

/** An HS256 connection token for `sub`, as any backend would mint it. */
function token(sub) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({
    sub, exp: Math.floor(Date.now() / 1000) + 3600, info: { name: sub },
  })}`;
  return `${body}.${crypto.createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

async function api(method, p, body) {
  const res = await fetch(base + p, {
    method,
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.equal(res.status, 200, `${method} ${p}: ${await res.clone().text()}`);
  return res.json();
}

/** Starts the server on port 0 and learns its address from its first line. */
function startServer() {
  const config = path.join(dir, 'switchboard.toml');
  fs.writeFileSync(config, `listen = "127.0.0.1:0"
node_name = "n1"
[auth]
hmac_secret = "${SECRET}"
[api]
key = "${API_KEY}"
[admin]
enabled = true
[[namespaces]]
name = "chat"
publish = true
presence = true
`);
  server = spawn(BIN, ['serve', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  server.stderr.on('data', (d) => { err = (err + d).slice(-4000); });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no listening line in 20 s: ${err}`)), 20_000);
    server.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/[0-9.:]+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    server.on('exit', (code) => reject(new Error(`server exited ${code}: ${err}`)));
  });
}

before(async () => {
  assert.ok(BIN, 'SWITCHBOARD_BIN must be set (run scripts/e2e)');
  fs.mkdirSync(SHOTS, { recursive: true });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'switchboard-admin-e2e-'));
  base = await startServer();
  context = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1000, height: 640 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    timeout: 30_000,
  });
  context.setDefaultTimeout(TIMEOUT);
});

after(async () => {
  await context?.close();
  if (server && server.exitCode === null) {
    server.kill('SIGTERM');
    await new Promise((r) => { server.once('exit', r); setTimeout(r, 5000); });
    if (server.exitCode === null) server.kill('SIGKILL');
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** A page of this origin holding one WebSocket client of `user` in `channel`. */
async function connectClient(user, channel) {
  const page = await context.newPage();
  await page.goto(`${base}/health`);
  await page.evaluate(async ({ url, channel }) => {
    window.closeCode = null;
    const ws = new WebSocket(url);
    ws.onclose = (e) => { window.closeCode = e.code; };
    await new Promise((resolve, reject) => {
      ws.onmessage = (m) => {
        const f = JSON.parse(m.data);
        if (f.type === 'welcome') ws.send(JSON.stringify({ op: 'subscribe', channel, id: 1 }));
        if (f.id === 1) (f.ok ? resolve() : reject(new Error(m.data)));
      };
      ws.onerror = () => reject(new Error('websocket failed'));
    });
  }, { url: `${base.replace('http', 'ws')}/ws?token=${token(user)}`, channel });
  return page;
}

const text = (page, sel) => page.$eval(sel, (el) => el.textContent.trim());

async function waitText(page, sel, want) {
  try {
    await page.waitForFunction(
      ([s, w]) => document.querySelector(s)?.textContent.trim() === w, [sel, want],
    );
  } catch (e) {
    assert.equal(await text(page, sel), want, sel);
    throw e;
  }
}

test('an operator logs in, watches figures move, finds a user and disconnects them', async () => {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[admin console] ${m.text()}`); });
  await page.goto(`${base}/admin`);

  // A wrong key is refused and the form stays.
  await page.fill('#key', 'not-the-key');
  await page.click('#login-button');
  await waitText(page, '#login-error', 'Wrong API key.');
  assert.equal(await page.isVisible('#dashboard'), false);
  await page.screenshot({ path: path.join(SHOTS, 'admin-login.png') });

  await page.fill('#key', API_KEY);
  await page.click('#login-button');
  await page.waitForSelector('#dashboard', { state: 'visible' });
  await waitText(page, '#feed-state', 'live');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('switchboard.admin.key')), API_KEY);
  assert.ok(!page.url().includes(API_KEY), 'the key is not in the URL');
  await waitText(page, '#connections', '0');

  // A client connects: it shows, with its channel.
  const client = await connectClient('alice', 'chat:lobby');
  await waitText(page, '#connections', '1');
  await page.waitForFunction(() => [...document.querySelectorAll('#channels td')]
    .some((td) => td.textContent === 'chat:lobby'));
  await waitText(page, '#nodes tbody td:first-child', 'n1');

  // Publications move the totals and, for one second, the rates.
  await page.evaluate(() => {
    window.maxRate = 0;
    const el = document.querySelector('#publications-rate');
    new MutationObserver(() => {
      window.maxRate = Math.max(window.maxRate, Number(el.textContent.replace(/,/g, '')) || 0);
    }).observe(el, { childList: true, characterData: true, subtree: true });
  });
  for (let i = 0; i < 5; i++) await api('POST', '/api/publish', { channel: 'chat:lobby', data: { i } });
  await waitText(page, '#publications-total', '5');
  await waitText(page, '#deliveries-total', '5');
  await page.waitForFunction(() => window.maxRate > 0);
  await page.screenshot({ path: path.join(SHOTS, 'admin.png') });

  // Find alice: one connection, on n1.
  await page.fill('#user', 'alice');
  await page.click('#search button');
  await waitText(page, '#user-total', '1 connection');
  const cells = await page.$$eval('#user-connections tbody tr td', (tds) => tds.map((t) => t.textContent));
  assert.equal(cells[1], 'n1');
  assert.match(cells[0], /^c-/);
  assert.equal(cells[6], '{"name":"alice"}');
  const section = await page.$('#user-result');
  await section.scrollIntoViewIfNeeded();
  await page.screenshot({ path: path.join(SHOTS, 'admin-user.png') });

  // Disconnect: the client is closed 4000 and the listing follows.
  await page.click('#disconnect');
  await client.waitForFunction(() => window.closeCode !== null);
  assert.equal(await client.evaluate(() => window.closeCode), 4000);
  await waitText(page, '#user-message', 'Disconnected 1 connection of alice.');
  await waitText(page, '#user-total', 'not connected');
  await waitText(page, '#connections', '0');

  // Log out: the key leaves the tab.
  await page.click('#logout');
  await page.waitForSelector('#login', { state: 'visible' });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('switchboard.admin.key')), null);
  assert.deepEqual(errors, []);
});
