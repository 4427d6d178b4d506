// Server-sent events (PROTOCOL §11) for the Switchboard client: the stream read with
// fetch (browsers and Node 20+; it sends `Last-Event-ID` itself, which EventSource
// cannot be told to), and the event ids that resume every channel.

/**
 * An event id: `<channel>:<epoch>:<offset>` entries joined by `;`.
 * @param {string|null|undefined} id
 * @returns {Map<string, {epoch: string, offset: number}>}
 */
export function parseEventId(id) {
  const out = new Map();
  for (const entry of (id ?? '').split(';')) {
    const e = entry.trim();
    const o = e.lastIndexOf(':');
    const p = o > 0 ? e.lastIndexOf(':', o - 1) : -1;
    if (p <= 0) continue;
    const offset = Number(e.slice(o + 1));
    if (!Number.isSafeInteger(offset) || offset < 0) continue;
    const channel = e.slice(0, p);
    if (!out.has(channel)) out.set(channel, { epoch: e.slice(p + 1, o), offset });
  }
  return out;
}

/** @param {Map<string, {epoch: string, offset: number}>} positions */
export function renderEventId(positions) {
  return [...positions].map(([c, p]) => `${c}:${p.epoch}:${p.offset}`).join(';');
}

/** The `/sse` URL next to a `/ws` one (http(s), same host, path `…/sse`). */
export function sseUrlFor(wsUrl, base) {
  const u = base ? new URL(wsUrl, base) : new URL(wsUrl);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  if (u.protocol === 'wss:') u.protocol = 'https:';
  u.pathname = u.pathname.replace(/\/ws\/?$/, '/sse');
  if (!u.pathname.endsWith('/sse')) u.pathname = u.pathname.replace(/\/?$/, '/sse');
  return u;
}

/**
 * Opens a stream and calls `onEvent({event, id, data})` for each event (an id-only
 * record has data `''` and event `''`); `onOpen()` once the `200` arrived. Resolves when
 * the stream ends: `{status: 200}`, or a refusal `{status, error}` with its JSON error.
 * Rejects on a network failure (or when `signal` aborts).
 */
export async function readEventStream(fetchImpl, url, headers, signal, onOpen, onEvent) {
  const res = await fetchImpl(url, { headers, signal, credentials: 'include', cache: 'no-store' });
  if (res.status !== 200 || !res.body) {
    let error = null;
    try { error = (await res.json())?.error ?? null; } catch { /* not JSON */ }
    return { status: res.status, error };
  }
  onOpen();
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let ev = { event: '', id: null, data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.search(/\r\n|\n|\r/)) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + (buf.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (ev.id !== null || ev.data.length) {
          onEvent({ event: ev.event, id: ev.id, data: ev.data.join('\n') });
        }
        ev = { event: '', id: null, data: [] };
        continue;
      }
      if (line.startsWith(':')) continue; // a keep-alive comment
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      let v = c < 0 ? '' : line.slice(c + 1);
      if (v.startsWith(' ')) v = v.slice(1);
      if (field === 'event') ev.event = v;
      else if (field === 'data') ev.data.push(v);
      else if (field === 'id') ev.id = v;
    }
  }
  return { status: 200 };
}
