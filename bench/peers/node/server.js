'use strict';
// A broadcast server written the way the `ws` README shows it ("Server broadcast"):
// every text message received is sent to every open client. Nothing tuned.
// GET /ws/{id}; the broadcast text is `User {id}: {text}`, like the FastAPI guide's
// example. Port from argv or PORT.

const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || process.env.PORT || 8000);
const wss = new WebSocketServer({ host: '127.0.0.1', port });

wss.on('connection', function connection(ws, req) {
  const id = decodeURIComponent((req.url || '').replace(/^\/ws\//, ''));
  ws.on('error', console.error);
  ws.on('message', function message(data, isBinary) {
    if (isBinary) return;
    const text = `User ${id}: ${data}`;
    wss.clients.forEach(function each(client) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(text);
      }
    });
  });
});

wss.on('listening', () => {
  console.log(`node ws broadcast peer listening on 127.0.0.1:${port}`);
});
