// Calls to the server with the API key as a bearer token. The key lives in
// this tab's sessionStorage only: it goes with the tab, and never into a URL.

const KEY = 'switchboard.admin.key';

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

/** The key was refused: the page goes back to its login form. */
export class Unauthorized extends Error {}

/** A JSON call; resolves to the parsed body, throws with the server's message. */
export async function call(path, { method = 'GET', body, key = storedKey() } = {}) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  const data = await res.json().catch(() => ({}));
  if (res.status === 401) throw new Unauthorized(data?.error?.message || 'wrong API key');
  if (!res.ok) throw new Error(data?.error?.message || `HTTP ${res.status}`);
  return data;
}

/** Whether `key` opens the API (a call that needs it and changes nothing). */
export async function checkKey(key) {
  await call('/api/info', { key });
}

export function findUser(user) {
  return call(`/api/admin/user/${encodeURIComponent(user)}`);
}

export function disconnectUser(user) {
  return call('/api/disconnect', { method: 'POST', body: { user } });
}
