"""A small, real OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benches.

Stdlib only (``http.server`` in a thread). ``POST /v1/chat/completions`` answers streamed
(server-sent events, chunked HTTP/1.1, ``data: [DONE]``) when the body says ``"stream": true``,
else one JSON ``chat.completion``; ``GET /v1/models`` lists the model. Behaviour is set by
attributes that may be changed while it runs:

- ``mode``: ``"normal"``; ``"401"``, ``"429"`` (with ``Retry-After: retry_after``), ``"500"``
  (OpenAI-style JSON error bodies); ``"stall"`` (stream ``fail_after`` content chunks, then
  send nothing until ``stall_s`` passes or the server stops); ``"malformed"`` (stream
  ``fail_after`` chunks, then an event whose data is not JSON); ``"bad_chunk"`` (valid JSON
  that is not a chunk); ``"endless"`` (after ``reply``, stream ``endless_token`` every
  ``inter_token_s`` until the client goes away or the server stops: a reply that never ends).
- ``ttft_s``: time to first token, counted from the request (a role-only chunk is sent at once,
  as real servers do, so only a wall-clock deadline catches a slow first token);
  ``inter_token_s``: delay between content chunks.
- ``reply``: the text, streamed as word-sized tokens with their leading space.
- ``api_key``: when set, other keys get 401 (whose message echoes the key, as a careless server
  might: a test that the client side never logs it).

``requests`` records each request: ``{"path", "authorization", "headers", "body"}`` (headers
with lower-case names).

    with ChatServer(reply="Hello there.", ttft_s=0.5) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ChatServer", "unused_port"]

DEFAULT_REPLY = "I can see that. It is good to see you smiling again, and I am glad I am here with you."


def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (connection refused), for tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tokens_of(text: str) -> list[str]:
    """Word-sized tokens with their leading white space, like an LLM's stream."""
    return re.findall(r"\s*\S+", text)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, message: str, etype: str, headers: dict[str, str] | None = None) -> None:
        self._json(code, {"error": {"message": message, "type": etype, "param": None, "code": etype}},
                   headers)

    def do_GET(self) -> None:
        cs = self.server.owner
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": cs.model, "object": "model",
                                                        "created": 0, "owned_by": "test"}]})
        else:
            self._error(404, "not found", "not_found")

    def do_POST(self) -> None:
        cs = self.server.owner
        t0 = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._error(400, "invalid JSON body", "invalid_request_error")
            return
        auth = self.headers.get("Authorization", "")
        with cs.lock:
            cs.requests.append({"path": self.path, "authorization": auth, "body": body,
                                "headers": {k.lower(): v for k, v in self.headers.items()}})
            mode = cs.mode
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(404, f"unknown path {self.path}", "not_found")
            return
        key = auth[7:] if auth.startswith("Bearer ") else auth
        if mode == "401" or (cs.api_key is not None and key != cs.api_key):
            self._error(401, f"Incorrect API key provided: {key}.", "invalid_api_key")
            return
        if mode == "429":
            self._error(429, "Rate limit reached, slow down.", "rate_limit_exceeded",
                        {"Retry-After": f"{cs.retry_after:g}"})
            return
        if mode == "500":
            self._error(500, "The server had an error while processing your request.", "server_error")
            return
        model = body.get("model", cs.model)
        cid = f"chatcmpl-{cs.next_id()}"
        created = int(time.time())
        toks = tokens_of(cs.reply)
        if not body.get("stream"):
            self._sleep_until(t0 + cs.ttft_s)
            self._json(200, {"id": cid, "object": "chat.completion", "created": created, "model": model,
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": cs.reply}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": len(toks),
                                       "total_tokens": 1 + len(toks)}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        try:
            self._send_event(chunk({"role": "assistant", "content": ""}))
            self._sleep_until(t0 + cs.ttft_s)
            for i, tok in enumerate(toks):
                if mode in ("stall", "malformed", "bad_chunk") and i == cs.fail_after:
                    if mode == "stall":
                        cs.stopping.wait(cs.stall_s)
                        return self._end_chunked()
                    if mode == "malformed":
                        self._send_raw(b"data: {\"id\": \"x\", \"choices\": [{\"delta\": {\"content\": \"br\n\n")
                    else:
                        self._send_event({"unexpected": True, "choices": "none"})
                    self._send_raw(b"data: [DONE]\n\n")
                    return self._end_chunked()
                if i and cs.inter_token_s:
                    time.sleep(cs.inter_token_s)
                self._send_event(chunk({"content": tok}))
            while mode == "endless" and not cs.stopping.is_set():
                if cs.inter_token_s:
                    time.sleep(cs.inter_token_s)
                self._send_event(chunk({"content": cs.endless_token}))
            self._send_event(chunk({}, "stop"))
            self._send_raw(b"data: [DONE]\n\n")
            self._end_chunked()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up: fine

    def _sleep_until(self, t: float) -> None:
        dt = t - time.monotonic()
        if dt > 0:
            self.server.owner.stopping.wait(dt)

    def _send_raw(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_event(self, obj: dict) -> None:
        self._send_raw(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "ChatServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing its keep-alive connection (or abandoning a stalled stream) is normal.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class ChatServer:
    """The loopback server; ``start()``/``stop()`` or use as a context manager.

    Constructor arguments set the attributes the module doc describes (times in seconds);
    ``model`` is the name ``GET /v1/models`` lists.
    """

    def __init__(self, reply: str = DEFAULT_REPLY, mode: str = "normal", ttft_s: float = 0.0,
                 inter_token_s: float = 0.0, fail_after: int = 0, stall_s: float = 30.0,
                 api_key: str | None = None, retry_after: float = 1.0, model: str = "test-model",
                 endless_token: str = " and") -> None:
        self.reply, self.mode, self.ttft_s, self.inter_token_s = reply, mode, ttft_s, inter_token_s
        self.fail_after, self.stall_s, self.api_key, self.retry_after = fail_after, stall_s, api_key, retry_after
        self.model = model
        self.endless_token = endless_token
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._ids = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def next_id(self) -> int:
        """1, 2, 3, ...: the number of the next completion (its ``id`` suffix), thread-safe."""
        with self.lock:
            self._ids += 1
            return self._ids

    @property
    def port(self) -> int:
        """The TCP port it listens on (chosen by the OS at ``start``)."""
        assert self._httpd is not None, "not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, what ``chat.base_url`` takes."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "ChatServer":
        """Bind 127.0.0.1 on a free port and serve from a daemon thread; returns self."""
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="chat-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release stalled streams, stop serving and close the socket (idempotent)."""
        self.stopping.set()  # releases stalled streams
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
