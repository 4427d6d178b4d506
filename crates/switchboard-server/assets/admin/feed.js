// The live figures: GET /api/admin/stats read as a text/event-stream through
// fetch() (EventSource cannot send the Authorization header), reopened after
// a pause whenever it ends, until stop() or the page goes.

import { storedKey, Unauthorized } from './api.js';

const RETRY_MS = [1000, 2000, 5000, 10000];

/** Splits text into whole events; returns [events, the unfinished rest]. */
export function parseEvents(text) {
  const events = [];
  const blocks = text.split(/\r?\n\r?\n/);
  const rest = blocks.pop();
  for (const block of blocks) {
    const e = { event: 'message', data: [] };
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'event') e.event = value;
      else if (field === 'data') e.data.push(value);
    }
    if (e.data.length) events.push({ event: e.event, data: e.data.join('\n') });
  }
  return [events, rest];
}

/**
 * Starts the feed. `onStats(stats)` for each event, `onState(text, ok)` when
 * the connection changes, `onUnauthorized()` when the key is refused.
 * Returns stop().
 */
export function startFeed({ onStats, onState, onUnauthorized }) {
  let stopped = false;
  let controller = null;
  let failures = 0;

  async function once() {
    controller = new AbortController();
    const res = await fetch('/api/admin/stats', {
      headers: { Authorization: `Bearer ${storedKey()}`, Accept: 'text/event-stream' },
      cache: 'no-store',
      signal: controller.signal,
    });
    if (res.status === 401) throw new Unauthorized('wrong API key');
    if (!res.ok || !res.body) {
      const data = await res.json().catch(() => ({}));
      throw new Error(data?.error?.message || `HTTP ${res.status}`);
    }
    onState('live', true);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      failures = 0;
      let events;
      [events, buffer] = parseEvents(buffer + value);
      for (const e of events) {
        if (e.event === 'stats') onStats(JSON.parse(e.data));
      }
    }
  }

  async function run() {
    while (!stopped) {
      try {
        await once();
        if (stopped) return;
        onState('reconnecting', false);
      } catch (e) {
        if (stopped) return;
        if (e instanceof Unauthorized) {
          onUnauthorized();
          return;
        }
        onState(`reconnecting (${e.message})`, false);
      }
      const wait = RETRY_MS[Math.min(failures, RETRY_MS.length - 1)];
      failures += 1;
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  function stop() {
    stopped = true;
    controller?.abort();
  }
  // The stream ends with the page (the server's slot is given back at once).
  addEventListener('pagehide', stop, { once: true });
  run();
  return stop;
}
