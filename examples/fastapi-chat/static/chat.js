// The chat page: FastAPI says who we are and takes what we say; the connection to the
// gateway is the JS SDK's, authenticated by the HttpOnly `sb_token` cookie the login set
// (no token in this script: the browser sends the cookie with the WebSocket upgrade).
import { Switchboard } from '/sdk/switchboard.js';

const $ = (id) => document.getElementById(id);
const status = $('status');
const messages = $('messages');
const error = $('error');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A random idempotency key: the same for every retry of one message. */
function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * POSTs JSON to the backend. While the gateway restarts the backend answers 503 (or this
 * tab loses the network): the same body, so the same idempotency key, is sent again with
 * back-off, and a message whose first answer was lost is still published once.
 */
async function post(path, body, attempts = 10) {
  let delay = 250;
  for (let attempt = 1; ; attempt++) {
    let res = null;
    try {
      res = await fetch(path, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
    } catch (err) {
      if (attempt >= attempts) throw new Error(`not sent: ${err.message}`);
    }
    if (res?.ok) return res.json();
    if (res && res.status === 401) location.assign('/');
    const retryable = !res || res.status === 503 || res.status === 429;
    if (res && (!retryable || attempt >= attempts)) {
      const body = await res.json().catch(() => null);
      throw new Error(body?.error?.message ?? `the server answered ${res.status}`);
    }
    const after = Number(res?.headers.get('Retry-After')) * 1000;
    await sleep(after > 0 ? after : delay);
    delay = Math.min(delay * 2, 4000);
  }
}

async function getJson(path) {
  const res = await fetch(path);
  if (res.status === 401) {
    location.assign('/');
    throw new Error('logged out');
  }
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return res.json();
}

function text(v) { return typeof v === 'string' ? v : JSON.stringify(v); }

function showMessage(pub) {
  const li = document.createElement('li');
  li.dataset.offset = String(pub.offset);
  li.textContent = `${text(pub.data?.user)}: ${text(pub.data?.text)}`; // never parsed as HTML
  const atBottom = messages.scrollTop + messages.clientHeight >= messages.scrollHeight - 4;
  messages.append(li);
  if (atBottom) messages.scrollTop = messages.scrollHeight;
}

function showNotification(pub) {
  const li = document.createElement('li');
  li.dataset.offset = String(pub.offset);
  li.textContent = `${text(pub.data?.sender)}: ${text(pub.data?.text)}`;
  $('notifications').prepend(li);
}

let whoPending = null;
async function refreshWho() {
  // join/leave can come in bursts: one request at a time, one more after it if asked.
  if (whoPending) { whoPending.again = true; return; }
  whoPending = { again: false };
  try {
    const { users } = await getJson('/who');
    $('who').replaceChildren(...users.map((u) => {
      const li = document.createElement('li');
      li.dataset.user = u;
      li.textContent = u;
      return li;
    }));
  } catch (err) {
    console.warn('who:', err.message);
  } finally {
    const again = whoPending.again;
    whoPending = null;
    if (again) refreshWho();
  }
}

async function main() {
  const me = await getJson('/me');
  // The SDK falls back to server-sent events (read-only) when the WebSocket cannot open.
  // It reads /sse with fetch, which needs the page and the gateway on one origin (nginx in
  // front of both): across ports, as in development, it could only fail, so it is off.
  const sameOrigin = new URL(me.ws_url).host === location.host;
  const sb = new Switchboard(me.ws_url, { sse: sameOrigin });

  sb.on('state', (state, _prev, info) => {
    status.dataset.state = state;
    if (state === 'connected') {
      status.textContent = `connected as ${me.user} (${info.transport}${info.readOnly ? ', read-only' : ''})`;
    } else {
      status.textContent = state === 'reconnecting' ? 'reconnecting…' : state;
    }
  });
  sb.on('subscribed', (r) => { if (r.channel === me.channel) refreshWho(); });
  sb.on('join', refreshWho);
  sb.on('leave', refreshWho);
  sb.on('error', (err) => console.warn('switchboard:', err.code, err.message));
  sb.connect();

  // What was said before we came, then everything after it: subscribing from the
  // history's position leaves no gap and no duplicate between the two.
  const recent = await getJson('/history');
  for (const p of recent.publications) showMessage(p);
  sb.subscribe(me.channel, showMessage, { since: { offset: recent.offset, epoch: recent.epoch } })
    .catch((err) => { error.textContent = `cannot join the lobby: ${err.message}`; });
  // The personal channel is an inbox: after a restart or on another device, what was
  // not yet shown (acknowledged) here comes again, in order.
  sb.subscribe(`user:${me.user}`, showNotification)
    .catch((err) => { error.textContent = `no notifications: ${err.message}`; });

  // Messages go out in the order they were typed, each with its own key.
  let queue = Promise.resolve();
  $('say').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('message');
    const said = input.value.trim();
    if (!said) return;
    input.value = '';
    error.textContent = '';
    const body = { text: said, key: newKey() };
    queue = queue.then(() => post('/chat', body))
      .catch((err) => { error.textContent = `not sent: ${err.message}`; });
  });

  $('notify').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const to = $('notify-user').value.trim();
    const said = $('notify-text').value.trim();
    if (!to || !said) return;
    error.textContent = '';
    try {
      await post(`/notify/${encodeURIComponent(to)}`, { text: said, key: newKey() });
      $('notify-text').value = '';
    } catch (err) {
      error.textContent = `not notified: ${err.message}`;
    }
  });

  $('logout').addEventListener('click', async () => {
    sb.disconnect();
    await fetch('/logout', { method: 'POST' });
    location.assign('/');
  });
}

main().catch((err) => { error.textContent = err.message; });
