// What the browser tests share: Debian's chromium through playwright-core, the
// `switchboard` binary in development mode (restartable in place), a gate that holds a
// page's requests to one path, and a page whose WebSocket cannot open.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { API_KEY, switchboardBin } from '../../clients/js/testing/real-server.js';

export const OUT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'out');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** The server binary: $SWITCHBOARD_BIN (scripts/e2e sets it), else a build under target/. */
export function bin() {
  const b = switchboardBin();
  if (!b) throw new Error('no switchboard binary: set SWITCHBOARD_BIN (run scripts/e2e)');
  return b;
}

/** A headless Chromium with its own profile; `close()` removes the profile too. */
export async function launch() {
  fs.mkdirSync(OUT, { recursive: true });
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'switchboard-e2e-'));
  // launchPersistentContext is Playwright's way of passing --user-data-dir.
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 900, height: 600 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    timeout: 30_000,
  });
  // Generous: the machine is shared, and reconnects back off.
  context.setDefaultTimeout(20_000);
  return {
    context,
    close: async () => {
      await context.close();
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * `switchboard serve` in development mode (no config, no secret: the demo page and
 * `/dev/token` are on) with the file history store in `dir`, so a restart on the same
 * `port` keeps every channel's publications and epoch. `API_KEY` is the API key.
 */
export function startDevServer(dir, port = 0) {
  const child = spawn(bin(), ['serve'], {
    cwd: dir,
    env: {
      PATH: process.env.PATH ?? '',
      RUST_LOG: 'warn',
      SWITCHBOARD_LISTEN: `127.0.0.1:${port}`,
      SWITCHBOARD_API_KEY: API_KEY,
      SWITCHBOARD_HISTORY_STORE: 'file',
      SWITCHBOARD_HISTORY_PATH: path.join(dir, 'history.db'),
      SWITCHBOARD_SHUTDOWN_READY_GRACE: '0s',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let logs = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { logs += d; });
  return new Promise((resolve, reject) => {
    const onExit = (code, sig) => reject(new Error(`switchboard exited (${code ?? sig}) before listening: ${logs}`));
    child.once('exit', onExit);
    createInterface({ input: child.stdout }).on('line', (line) => {
      const m = /^listening on http:\/\/(.+)$/.exec(line);
      if (!m) return;
      child.off('exit', onExit);
      resolve({
        child,
        addr: m[1],
        port: Number(m[1].split(':').pop()),
        http: `http://${m[1]}`,
        logs: () => logs,
        /** SIGTERM (a drain: clients get 1001 and reconnect) and wait for the exit. */
        stop: () => new Promise((done) => {
          if (child.exitCode !== null || child.signalCode !== null) return done();
          child.once('exit', () => done());
          child.kill('SIGTERM');
        }),
      });
    });
  });
}

/**
 * Holds the page's requests to `pathname` while `hold()` is on, and records each one's
 * `Last-Event-ID` header (null when absent) in `requests`. The way to keep one page away
 * from a restarted server until the test has published what it should then recover.
 */
export async function gate(page, pathname) {
  let held = null;
  let open = () => {};
  const requests = [];
  await page.route((url) => url.pathname === pathname, async (route) => {
    requests.push({ lastEventId: await route.request().headerValue('last-event-id') });
    if (held) await held;
    await route.continue().catch(() => {}); // the page may be closed meanwhile
  });
  return {
    requests,
    hold() { held = new Promise((resolve) => { open = resolve; }); },
    release() { held = null; open(); },
  };
}

/**
 * Makes the page's WebSockets fail as behind a proxy that refuses upgrades: each goes to a
 * path the server answers 404, so it never opens.
 */
export function blockWebSocket(page) {
  return page.addInitScript(() => {
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
      constructor(url, protocols) {
        const u = new URL(url, location.href);
        u.pathname = '/websocket-blocked-by-the-test';
        super(u, protocols);
      }
    };
  });
}

/** Waits until the server's presence in `channel` lists `user` (the stream joined it). */
export async function waitPresent(server, channel, user, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await fetch(`${server.http}/api/presence/${encodeURIComponent(channel)}`, {
      headers: { Authorization: `Bearer ${API_KEY}` },
    });
    const body = await res.json();
    if (res.ok && body.clients.some((c) => c.user === user)) return;
    if (Date.now() > deadline) throw new Error(`${user} not present in ${channel}: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
