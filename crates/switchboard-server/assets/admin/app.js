// The admin page: log in with the API key, then the live figures, and a
// search for a user with a button that disconnects them on every node.

import {
  checkKey, disconnectUser, findUser, forgetKey, storedKey, storeKey, Unauthorized,
} from './api.js';
import { startFeed } from './feed.js';
import {
  hideUser, showFeedState, showLoggedIn, showMessage, showStats, showUser,
} from './view.js';

const $ = (id) => document.getElementById(id);
let stopFeed = null;

function logIn() {
  showLoggedIn(true);
  showFeedState('connecting', false);
  stopFeed = startFeed({
    onStats: showStats,
    onState: showFeedState,
    onUnauthorized: () => logOut('The key was refused; log in again.'),
  });
}

function logOut(message = '') {
  stopFeed?.();
  stopFeed = null;
  forgetKey();
  hideUser();
  showLoggedIn(false);
  showMessage('login-error', message, true);
  $('key').focus();
}

/** An API call that sends the page back to the login form when the key is refused. */
async function guarded(work, messageId) {
  try {
    await work();
  } catch (e) {
    if (e instanceof Unauthorized) logOut('The key was refused; log in again.');
    else showMessage(messageId, e.message, true);
  }
}

$('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const key = $('key').value.trim();
  showMessage('login-error', '');
  try {
    await checkKey(key);
  } catch (e) {
    showMessage('login-error', e instanceof Unauthorized ? 'Wrong API key.' : e.message, true);
    return;
  }
  $('key').value = '';
  storeKey(key);
  logIn();
});

$('logout').addEventListener('click', () => logOut());

async function search(user) {
  showMessage('user-message', '');
  await guarded(async () => showUser(await findUser(user)), 'user-message');
}

$('search').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const user = $('user').value.trim();
  if (user) search(user);
});

$('disconnect').addEventListener('click', async () => {
  const user = $('disconnect').dataset.user;
  if (!user) return;
  await guarded(async () => {
    const r = await disconnectUser(user);
    showMessage('user-message', `Disconnected ${r.disconnected} connection${r.disconnected === 1 ? '' : 's'} of ${user}.`);
    // Connections close on every node and leave the listing within
    // moments: look again a few times.
    let found;
    for (let i = 0; i < 10; i++) {
      await new Promise((done) => setTimeout(done, 300));
      found = await findUser(user);
      if (found.total === 0) break;
    }
    showUser(found);
  }, 'user-message');
});

if (storedKey()) logIn();
else showLoggedIn(false);
