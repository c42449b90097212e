"""Bounds on what one HTTP request may cost the server, as an ASGI wrapper around the scoring app.

- a POST without Content-Type: 415 (the scoring server raised on it: 500);
- a body above `max_body_bytes` (announced or streamed): 413, read no further;
- a body that stalls for `body_timeout_s` between chunks (a slow client holding a worker): 408;
- rows above the row limit or images above the per-request pixel total (refused by the pyfunc model
  with a "request too large: " message, which MLflow answers 400): 413;
- error bodies keep a short message and no stack trace: they never echo the request back.
"""
from __future__ import annotations

import asyncio
import json

MAX_ERROR_MESSAGE_CHARS = 1000


def _json_response(status: int, message: str) -> tuple[dict, dict]:
    body = json.dumps({"error_code": "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR", "message": message}).encode()
    start = {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    return start, {"type": "http.response.body", "body": body}


def _short_error(status: int, body: bytes) -> tuple[int, bytes]:
    """(status, body) of an error answer: the message cut to MAX_ERROR_MESSAGE_CHARS, no stack
    trace; 413 for the pyfunc model's "request too large" refusals."""
    from cvengine.serving.pyfunc_model import TOO_LARGE_PREFIX

    try:
        data = json.loads(body)
    except ValueError:
        data = body[:MAX_ERROR_MESSAGE_CHARS].decode("utf-8", "replace")
    if not isinstance(data, dict):
        return status, json.dumps({"message": str(data)[:MAX_ERROR_MESSAGE_CHARS]}).encode()
    data.pop("stack_trace", None)
    message = data.get("message")
    if isinstance(message, str):
        # MLflow wraps the model's error as "Failed to predict data '<the input>'. \nError: <error>".
        if message.startswith("Failed to predict data") and "\nError: " in message:
            message = data["message"] = message.split("\nError: ", 1)[1]
        if message.startswith(TOO_LARGE_PREFIX):
            status, data["message"] = 413, message[len(TOO_LARGE_PREFIX) :]
        if len(data["message"]) > MAX_ERROR_MESSAGE_CHARS:
            data["message"] = data["message"][:MAX_ERROR_MESSAGE_CHARS] + " …"
    return status, json.dumps(data).encode()


class LimitedApp:
    def __init__(self, app, max_body_bytes: int, body_timeout_s: float):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not headers.get(b"content-type"):
            return await self._reply(send, 415, "a POST needs a Content-Type header: application/json (or text/csv)")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return await self._reply(send, 413, f"request body of {int(length)} bytes is above the limit of {self.max_body_bytes} bytes")
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=self.body_timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                return await self._reply(send, 408, f"the request body stalled for {self.body_timeout_s:g} s")
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return await self._reply(send, 413, f"request body above the limit of {self.max_body_bytes} bytes")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        error = {"start": None, "body": []}

        async def bounded_send(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                error["start"] = dict(message)
                return
            if error["start"] is None:
                return await send(message)
            error["body"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start = error["start"]
            status, short = _short_error(start["status"], b"".join(error["body"]))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"] + [(b"content-length", str(len(short)).encode())]
            await send({**start, "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": short})

        return await self.app(scope, replay, bounded_send)

    @staticmethod
    async def _reply(send, status: int, message: str) -> None:
        start, body = _json_response(status, message)
        await send(start)
        await send(body)
