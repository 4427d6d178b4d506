// The login form: FastAPI answers with the HttpOnly `sb_token` cookie, which this
// script never sees; the chat page's WebSocket carries it to the gateway.
const form = document.getElementById('login-form');
const error = document.getElementById('error');

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  error.textContent = '';
  const user = document.getElementById('user').value.trim();
  try {
    const res = await fetch('/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user }),
    });
    if (!res.ok) {
      const body = await res.json().catch(() => null);
      error.textContent = body?.error?.message ?? `login failed (${res.status})`;
      return;
    }
    location.assign('/chat');
  } catch (err) {
    error.textContent = `login failed: ${err.message}`;
  }
});
