"""A FastAPI broadcast server, as the FastAPI WebSockets guide builds it.

What the guide's example does: a connection manager keeps one WebSocket per user id
in a dict; `GET /ws/{user_id}` accepts, registers, and broadcasts every text it
receives to everyone as ``User {user_id}: {text}`` with ``asyncio.gather(...,
return_exceptions=True)``; on disconnect it unregisters and broadcasts that the user
left. It runs the way the guide's production settings say: uvicorn with uvloop, the
``websockets`` implementation, 30 s / 10 s protocol pings, limit_concurrency,
limit_max_requests, keep-alive 5 s and access log; but one worker (the guide's four
workers need Redis for broadcast to reach everyone, and the benchmark pins the
server to one core).

Port from argv or PORT.
"""

import asyncio
import os
import sys

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


class ConnectionManager:
    """Live connections by user id; every connect() has its disconnect()."""

    def __init__(self) -> None:
        self.active_connections: dict[str, WebSocket] = {}

    async def connect(self, user_id: str, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections[user_id] = websocket

    def disconnect(self, user_id: str) -> None:
        self.active_connections.pop(user_id, None)

    async def broadcast(self, message: str) -> None:
        # Concurrent sends; one failed send does not cancel the others.
        await asyncio.gather(
            *(ws.send_text(message) for ws in list(self.active_connections.values())),
            return_exceptions=True,
        )


manager = ConnectionManager()


@app.websocket("/ws/{user_id}")
async def websocket_endpoint(websocket: WebSocket, user_id: str) -> None:
    await manager.connect(user_id, websocket)
    try:
        while True:
            text = await websocket.receive_text()
            await manager.broadcast(f"User {user_id}: {text}")
    except WebSocketDisconnect:
        manager.disconnect(user_id)
        await manager.broadcast(f"User {user_id} has left.")


def main() -> None:
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "8000"))
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        workers=1,
        loop="uvloop",
        ws="websockets",
        ws_ping_interval=30,
        ws_ping_timeout=10,
        limit_concurrency=10000,
        limit_max_requests=50000,
        timeout_keep_alive=5,
        access_log=True,
    )


if __name__ == "__main__":
    main()
