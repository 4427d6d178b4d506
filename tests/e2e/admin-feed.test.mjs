// The admin page's event-stream parser (assets/admin/feed.js), without a browser.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseEvents } from '../../crates/switchboard-server/assets/admin/feed.js';

test('whole events are parsed and a partial one is kept for the next chunk', () => {
  const [events, rest] = parseEvents('event: stats\ndata: {"a":1}\n\n: ping\n\nevent: stats\ndata: {"a"');
  assert.deepEqual(events, [{ event: 'stats', data: '{"a":1}' }]);
  assert.equal(rest, 'event: stats\ndata: {"a"');
  const [more, left] = parseEvents(`${rest}:2}\n\n`);
  assert.deepEqual(more, [{ event: 'stats', data: '{"a":2}' }]);
  assert.equal(left, '');
});

test('multi-line data is joined and CRLF is accepted', () => {
  const [events] = parseEvents('data: one\r\ndata:two\r\n\r\n');
  assert.deepEqual(events, [{ event: 'message', data: 'one\ntwo' }]);
});
