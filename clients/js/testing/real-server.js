// The real `switchboard` binary as a child process, for the tests that run the SDK
// against it: a temp config, port 0 (or a given port, to restart in place), tokens
// minted by `switchboard token`, and the HTTP API for publishing.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const SECRET = 'js-sdk-test-secret-0123456789';
export const API_KEY = 'js-sdk-test-key';

/**
 * $SWITCHBOARD_BIN (scripts/test sets it after building), else a build under target/.
 * @returns {string|null}
 */
export function switchboardBin() {
  if (process.env.SWITCHBOARD_BIN) {
    if (!existsSync(process.env.SWITCHBOARD_BIN)) {
      throw new Error(`SWITCHBOARD_BIN=${process.env.SWITCHBOARD_BIN} does not exist`);
    }
    return process.env.SWITCHBOARD_BIN;
  }
  for (const profile of ['debug', 'release']) {
    const p = join(REPO, 'target', profile, 'switchboard');
    if (existsSync(p)) return p;
  }
  return null;
}

/** A connection token for `user`, minted by the binary with the secret alone. */
export function mintToken(bin, user, ttl = '10m') {
  return execFileSync(bin, ['token', '--sub', user, '--ttl', ttl], {
    env: { SWITCHBOARD_AUTH_HMAC_SECRET: SECRET },
    encoding: 'utf8',
  }).trim();
}

/** A directory for one test's config and data, removed by `cleanup()`. */
export function workDir() {
  const dir = mkdtempSync(join(tmpdir(), 'sb-js-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Starts `switchboard serve` in `dir` with `configToml` (written there); `port` 0 picks one.
 * Resolves once it prints its address; rejects if it exits first.
 */
export function startSwitchboard(bin, dir, configToml, port = 0) {
  const path = join(dir, 'switchboard.toml');
  writeFileSync(path, `listen = "127.0.0.1:${port}"\n${configToml}`);
  const child = spawn(bin, ['serve', '--config', path], {
    cwd: dir,
    env: { PATH: process.env.PATH ?? '', RUST_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let logs = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => { logs += d; });
  return new Promise((resolvePromise, reject) => {
    const lines = createInterface({ input: child.stdout });
    const onExit = (code, sig) => reject(new Error(`switchboard exited (${code ?? sig}) before listening: ${logs}`));
    child.once('exit', onExit);
    lines.on('line', (line) => {
      const m = /^listening on http:\/\/(.+)$/.exec(line);
      if (!m) return;
      child.off('exit', onExit);
      const addr = m[1];
      resolvePromise({
        child,
        addr,
        port: Number(addr.split(':').pop()),
        http: `http://${addr}`,
        ws: `ws://${addr}/ws`,
        logs: () => logs,
        /** SIGKILL, and wait until it is gone (a crash: nothing is flushed on purpose). */
        kill: () => stop(child, 'SIGKILL'),
        /** SIGTERM and wait. */
        stop: () => stop(child, 'SIGTERM'),
      });
    });
  });
}

function stop(child, signal) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    child.once('exit', () => res());
    child.kill(signal);
  });
}

/** POST /api/publish; resolves with `{offset, epoch}`. */
export async function apiPublish(server, channel, data) {
  const res = await fetch(`${server.http}/api/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`publish ${channel}: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

/** The [auth]/[api] sections every test config starts with. */
export const BASE_CONFIG = `
[auth]
hmac_secret = "${SECRET}"

[api]
key = "${API_KEY}"

[shutdown]
ready_grace = "0s"

[[namespaces]]
name = "chat"
publish = true
presence = true
history_size = 100
history_ttl = "10m"

[[namespaces]]
name = "user"
history_size = 100
history_ttl = "10m"
`;
