// Puts figures on the page. Everything shown comes from the server and, for
// users, channels and `info`, from clients: it is set as text, never as HTML.

const $ = (id) => document.getElementById(id);

const number = new Intl.NumberFormat('en');

function setText(id, value) {
  $(id).textContent = value;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    td.textContent = c;
    tr.append(td);
  }
  return tr;
}

function fillTable(id, rows) {
  $(id).tBodies[0].replaceChildren(...rows.map(row));
}

/** Rates of the last 2 minutes, for the charts. */
const HISTORY = 120;
const series = { publications: [], deliveries: [] };

function push(name, value) {
  const s = series[name];
  s.push(value);
  if (s.length > HISTORY) s.shift();
}

function drawChart(id, values) {
  const svg = $(id);
  const peak = Math.max(0, ...values);
  const max = Math.max(1, peak);
  const step = 240 / (HISTORY - 1);
  const start = HISTORY - values.length;
  const points = values
    .map((v, i) => `${((start + i) * step).toFixed(1)},${(46 - (v / max) * 44).toFixed(1)}`)
    .join(' ');
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', points);
  svg.replaceChildren(line);
  return peak;
}

export function showStats(s) {
  setText('connections', number.format(s.connections));
  setText('publications-rate', number.format(s.publications_per_s));
  setText('publications-total', number.format(s.publications_total));
  setText('deliveries-rate', number.format(s.deliveries_per_s));
  setText('deliveries-total', number.format(s.deliveries_total));
  setText('slow', number.format(s.slow_consumers_total));
  setText('rejected', number.format(s.handshakes_rejected_total));
  setText(
    'rejected-reasons',
    Object.entries(s.handshakes_rejected).map(([r, n]) => `${r} ${n}`).join(', '),
  );
  const broker = s.broker;
  setText('broker', `${broker.kind} ${broker.ok ? 'ok' : 'NOT OK'}`);
  $('broker').classList.toggle('bad', !broker.ok);
  setText('broker-lag', broker.lag_ms == null ? 'no probe' : `probe round trip ${broker.lag_ms.toFixed(1)} ms`);
  setText('answering-node', s.draining ? `${s.node} (draining)` : s.node);

  fillTable('nodes', s.nodes.map((n) => [
    n.name, n.version, number.format(n.connections), number.format(n.subscriptions),
  ]));
  setText('nodes-error', s.nodes_error ? `node list unavailable: ${s.nodes_error}` : '');
  fillTable('channels', s.top_channels.map((c) => [c.channel, number.format(c.subscribers)]));
  $('channels-empty').hidden = s.top_channels.length > 0;

  push('publications', s.publications_per_s);
  push('deliveries', s.deliveries_per_s);
  setText('publications-max', number.format(drawChart('publications-chart', series.publications)));
  setText('deliveries-max', number.format(drawChart('deliveries-chart', series.deliveries)));
}

export function showFeedState(text, ok) {
  const pill = $('feed-state');
  pill.hidden = false;
  pill.textContent = text;
  pill.classList.toggle('bad', !ok);
}

function idle(seconds) {
  if (seconds == null) return '';
  if (seconds < 60) return `${seconds} s`;
  return `${Math.floor(seconds / 60)} min`;
}

export function showUser(u) {
  $('user-result').hidden = false;
  setText('user-name', u.user);
  const n = u.total;
  setText('user-total', n === 0 ? 'not connected' : `${n} connection${n === 1 ? '' : 's'}`);
  $('disconnect').hidden = n === 0;
  $('disconnect').dataset.user = u.user;
  fillTable('user-connections', u.connections.map((c) => [
    c.client,
    c.node,
    c.device ?? '',
    c.subscriptions ?? '',
    c.queued_bytes ?? '',
    idle(c.idle_s),
    c.info == null ? '' : JSON.stringify(c.info),
  ]));
  setText(
    'user-unlisted',
    u.unlisted > 0
      ? `${u.unlisted} more on other nodes (turn presence on in the "user" namespace to list them)`
      : '',
  );
}

export function hideUser() {
  $('user-result').hidden = true;
}

export function showMessage(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle('error', isError);
}

export function showLoggedIn(yes) {
  $('login').hidden = yes;
  $('dashboard').hidden = !yes;
  $('logout').hidden = !yes;
  if (!yes) $('feed-state').hidden = true;
}
