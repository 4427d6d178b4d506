// End-to-end test of the demo page (crates/switchboard-server/assets/demo.html) in a
// real headless Chromium. Run through scripts/e2e, which starts the server and sets
// SWITCHBOARD_URL. Never downloads a browser: it uses Debian's chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const BASE = process.env.SWITCHBOARD_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const OUT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'out');
const TIMEOUT = 10_000;

let context;
let userDataDir;

before(async () => {
  assert.ok(BASE, 'SWITCHBOARD_URL must be set (run scripts/e2e)');
  fs.mkdirSync(OUT, { recursive: true });
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'switchboard-e2e-'));
  // launchPersistentContext is Playwright's way of passing --user-data-dir.
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 900, height: 600 },
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
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
});

/** Opens the demo page, joins as `name` and waits until it is subscribed. */
async function join(name) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[${name} console] ${m.text()}`); });
  await page.goto(BASE + '/');
  await page.fill('#name', name);
  await page.click('#join');
  await page.waitForFunction(
    (n) => document.querySelector('#status')?.textContent.includes(`connected as ${n}`),
    name,
  );
  // the composer is enabled once the subscribe reply came back
  await page.waitForSelector('#send:not([disabled])');
  return { page, errors };
}

function presenceUsers(page) {
  return page.$$eval('#presence li', (lis) => lis.map((li) => li.dataset.user).sort());
}

async function waitPresence(page, users) {
  const want = [...users].sort();
  try {
    await page.waitForFunction(
      (w) => JSON.stringify([...document.querySelectorAll('#presence li')].map((li) => li.dataset.user).sort()) === JSON.stringify(w),
      want,
    );
  } catch (e) {
    assert.deepEqual(await presenceUsers(page), want, 'presence list');
    throw e;
  }
}

test('two users chat through the demo page', async (t) => {
  const alice = await join('alice');
  const bob = await join('bob');

  await t.test('each page shows both users in #presence', async () => {
    await waitPresence(alice.page, ['alice', 'bob']);
    await waitPresence(bob.page, ['alice', 'bob']);
  });

  await t.test('a message from alice shows in bob\'s #messages', async () => {
    const text = `hello bob <b>&amp; ${Date.now()}</b>`;
    await alice.page.fill('#message', text);
    await alice.page.click('#send');
    const line = `alice: ${text}`;
    await bob.page.waitForFunction(
      (l) => [...document.querySelectorAll('#messages li')].some((li) => li.textContent === l),
      line,
    );
    // alice receives her own publication too
    await alice.page.waitForFunction(
      (l) => [...document.querySelectorAll('#messages li')].some((li) => li.textContent === l),
      line,
    );
    // the text is shown as text, never parsed as HTML
    assert.equal(await bob.page.locator('#messages b').count(), 0);
    assert.equal(await alice.page.inputValue('#message'), '');
    assert.equal(await alice.page.textContent('#error'), '');
    await bob.page.fill('#message', 'hi alice!');
    await bob.page.click('#send');
    await alice.page.waitForFunction(() =>
      [...document.querySelectorAll('#messages li')].some((li) => li.textContent === 'bob: hi alice!'));
    await alice.page.screenshot({ path: path.join(OUT, 'demo.png') });
  });

  await t.test('closing bob\'s page drops bob from alice\'s #presence', async () => {
    await bob.page.close();
    await waitPresence(alice.page, ['alice']);
    await alice.page.screenshot({ path: path.join(OUT, 'demo-after-leave.png') });
  });

  assert.deepEqual(alice.errors, [], 'no uncaught errors on alice\'s page');
  assert.deepEqual(bob.errors, [], 'no uncaught errors on bob\'s page');
});
