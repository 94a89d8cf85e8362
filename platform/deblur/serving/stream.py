"""The WebSocket stream of a live session, with a window of frames in flight.

Binary messages in: frames (PNG/JPEG, or raw after a ``{"format": "raw", ...}`` text message);
binary messages out: deblurred frames in order. ``{"type": "finish"}`` gets the last m frames
and a ``{"type": "done"}`` message; ``{"type": "resume", "received": N}`` continues a dropped
stream (``{"type": "resumed", "next_seq": S}`` and the outputs it missed). Bad input gets a
``{"type": "error", "status": 4xx, "detail": ...}`` message, then the socket closes with code
4000 + status and the detail as its reason.

Two tasks share the socket: one reads frames and hands each to the session actor at once, up to
``WINDOW`` pushes in flight, and one sends the outputs back in order as the pushes finish. So the
actor finds the next frame waiting when it finishes one, and transfer overlaps compute. The actor
runs pushes one at a time in the order they were sent (its default concurrency group has one
thread), so frames are never deblurred out of order.
"""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from deblur.serving.wire import ApiError, PushStats, decode_frame, encode_frame, parse_control

__all__ = ["WINDOW", "refuse", "run_stream"]

# Pushes handed to the actor and not yet answered. The actor keeps its last 8 outputs for a
# resume (actors.REPLAY_FRAMES); a window of 4 plus m stays within them.
WINDOW = 4


async def run_stream(
    websocket: WebSocket,
    *,
    actor: Any,
    result: Callable[[Any], Awaitable[Any]],
    abandon: Callable[[], Awaitable[None]],
    stats: PushStats,
    config: Any,
) -> None:
    """Serve one accepted WebSocket of a session until finish, an error or a drop.

    ``actor`` is the session's actor; ``result(ref)`` awaits one of its calls and maps its errors to
    ``ApiError``; ``abandon()`` tells it the client went away (it keeps the session for a resume).
    """
    outbox: asyncio.Queue[tuple[str, Any, float]] = asyncio.Queue()  # (kind, what to send, when sent)
    room = asyncio.Semaphore(WINDOW)
    fmt = "png"  # the frames' format both ways, set by the reader's settings message

    async def read() -> None:
        nonlocal fmt
        width = height = None
        seq = 0
        while True:
            message = await websocket.receive()
            if message.get("type") == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("text") is not None:
                control = parse_control(message["text"])
                kind = control.get("type")
                if kind == "resume":
                    reply = await result(actor.resume.remote(control["received"]))
                    seq = reply[0]
                    await outbox.put(("resumed", reply, 0.0))
                elif kind == "finish":
                    await outbox.put(("finish", (actor.finish.remote(), seq), 0.0))
                    return
                else:
                    fmt = control.get("format", fmt)
                    width, height = control.get("width", width), control.get("height", height)
                continue
            kind = "application/octet-stream" if fmt == "raw" else "image/png"
            frame = decode_frame(message["bytes"], kind, width=width, height=height, config=config)
            await room.acquire()
            await outbox.put(("frames", actor.push.remote(seq, frame), time.perf_counter()))
            seq += 1

    async def write() -> None:
        while True:
            kind, item, started = await outbox.get()
            if kind == "resumed":
                next_seq, missed = item
                await websocket.send_text(json.dumps({"type": "resumed", "next_seq": next_seq}))
                outputs = missed
            elif kind == "finish":
                outputs = await result(item[0])
                stats.add(None, len(outputs))
            else:
                outputs = await result(item)
                stats.add(time.perf_counter() - started, len(outputs))
            for _, out in outputs:
                await websocket.send_bytes(encode_frame(out, fmt))
            if kind == "frames":
                room.release()
            elif kind == "finish":
                await websocket.send_text(json.dumps({"type": "done", "frames": item[1]}))
                await websocket.close()
                return

    reader, writer = asyncio.create_task(read()), asyncio.create_task(write())
    try:
        # The writer ends the stream (after finish); the reader ends early only by an error.
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        await writer
    except ApiError as error:
        await refuse(websocket, error)
    except WebSocketDisconnect:
        await abandon()
    finally:
        for task in (reader, writer):
            task.cancel()


async def refuse(websocket: WebSocket, error: ApiError) -> None:
    """Bad input: an error message, then the socket closed with 4000 + status."""
    try:
        await websocket.send_text(json.dumps({"type": "error", "status": error.status, "detail": error.message}))
        # A close reason holds at most 123 bytes of UTF-8.
        reason = error.message.encode()[:123].decode(errors="ignore")
        await websocket.close(code=4000 + error.status, reason=reason)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client is already gone
