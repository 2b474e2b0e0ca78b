"""The chat endpoint: API key, client, one streamed request, and why it failed.

Official ``openai`` SDK, ``stream=True``, ``max_retries=0``. :class:`ChatEndpoint` holds the
client, the key and the outage state; :class:`ChatStream` runs one streamed request and queues
its tokens (``speaker.speak_chat_stream`` speaks them sentence by sentence under its
deadlines). A request fails (a :class:`ChatFailure` naming the cause, so the worker speaks an
offline template instead, or ends a reply already under way as ``truncated``) when the
endpoint is unreachable or refuses the connection (``unreachable``), times out (``timeout``),
answers 401/403/429/5xx (``http_401``, ``http_403``, ``http_429``, ``http_5xx``), sends a
malformed stream (``malformed_stream``, ``stream_error``) or more than
:func:`max_reply_chars` characters (``oversized_stream``), misses the time to first token
(``first_token_timeout``; ``chat.first_token_timeout_s``, which also bounds any later gap
between tokens: ``stall``) or the total time (``total_timeout``), or sends no text
(``empty_reply``).

A failure is logged once per outage (WARNING, with its cause); later failures of the same
outage go to DEBUG (a change of cause to INFO) and the first success logs the recovery (INFO).
After a failure the endpoint is not asked again for ``chat.retry_after_s`` (longer if a 429
gave Retry-After, at most an hour).

Privacy: the API key comes from ``$CREDENTIALS_DIRECTORY/openai_api_key`` (systemd
``LoadCredential=``), else the environment variable named by ``chat.api_key_env``; never from
config.toml. It is registered with ``redsg_edge.redact`` when read (every log handler scrubs
it) and removed from everything this module logs or speaks. Endpoints on loopback, private or
link-local addresses, ``localhost`` or ``*.local`` (llama.cpp server, Ollama) get
:data:`LOCAL_PLACEHOLDER_KEY` when none is set, because the SDK needs a non-empty string;
remote endpoints without a key are never contacted. The SDK's ``X-Stainless-*`` headers (OS,
CPU, Python and SDK versions) are not sent.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import ChatConfig
from ..redact import register as register_secret
from ..redact import scrub

log = logging.getLogger(__name__)

__all__ = ["LOCAL_PLACEHOLDER_KEY", "HTTP_LOGGER_PREFIXES", "read_api_key", "is_local_url",
           "max_reply_chars", "request_headers", "quiet_http_loggers", "ChatFailure",
           "classify_failure", "ChatStream", "ChatEndpoint"]

#: The key sent to a local endpoint when none is configured (llama.cpp's documented example).
LOCAL_PLACEHOLDER_KEY = "sk-no-key-required"

# --------------------------------------------------------------------------- key and endpoint

def read_api_key(chat: ChatConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key: ``$CREDENTIALS_DIRECTORY/openai_api_key`` if present and non-empty, else the
    environment variable ``chat.api_key_env``; None when neither is set. Whitespace stripped."""
    environ = os.environ if environ is None else environ
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / "openai_api_key"
        try:
            key = path.read_text(encoding="utf-8").strip()
            if key:
                return key
        except OSError:
            pass
    return (environ.get(chat.api_key_env) or "").strip() or None


def is_local_url(url: str) -> bool:
    """True for loopback, private (RFC 1918, ULA), link-local, ``localhost`` and ``*.local``
    hosts: a llama.cpp or Ollama server on this box or the LAN. No DNS lookup is made."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost") or host.endswith(".local"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


# --------------------------------------------------------------------------- chat stream

_READ_TIMEOUT_SLACK_S = 1.0  # SDK read timeout beyond first_token_timeout_s


def max_reply_chars(chat: ChatConfig) -> int:
    """Characters of reply text read from one stream at most: 16 per requested token (tokens
    average about 4), at least 2048. More ends the stream as ``oversized_stream``, so an
    endpoint that ignores ``max_tokens`` or sends one huge token cannot flood the worker."""
    return max(2048, 16 * chat.max_tokens)


#: Headers the SDK adds to every request that describe this machine or the SDK's internals
#: (OS, CPU architecture, Python version, SDK version, retry count, read timeout). None of them
#: is sent: only the transition leaves the device (README "Privacy").
_SDK_HEADERS = ("X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS",
                "X-Stainless-Arch", "X-Stainless-Runtime", "X-Stainless-Runtime-Version",
                "X-Stainless-Async", "X-Stainless-Retry-Count", "X-Stainless-Read-Timeout")


def _omit() -> Any:
    """The SDK's marker that removes a header (``openai.Omit``; ``openai._types`` in old 1.x)."""
    import openai

    omit = getattr(openai, "Omit", None)
    if omit is None:  # pragma: no cover - openai < 1.5x
        from openai._types import Omit as omit
    return omit()


def request_headers() -> dict[str, Any]:
    """``default_headers`` for the client: ``openai.Omit()`` removes each SDK header (the SDK
    merges headers case-insensitively and drops Omit values); a plain User-Agent replaces
    ``OpenAI/Python <version>``. What is sent: Authorization, Accept, Content-Type, User-Agent,
    Host, Content-Length, Connection, Accept-Encoding and the JSON body (model, messages,
    max_tokens, temperature, stream)."""
    from .. import __version__

    headers: dict[str, Any] = {h: _omit() for h in _SDK_HEADERS}
    headers["User-Agent"] = f"redsg-edge/{__version__}"
    return headers


#: Logger-name prefixes of HTTP client libraries (any fork or major version: httpx, httpx2,
#: httpcore, httpcore2, ...). At INFO they log a line per request, at DEBUG headers that may
#: echo the key.
HTTP_LOGGER_PREFIXES = ("httpx", "httpcore", "openai", "h11", "h2", "hpack", "urllib3")


def quiet_http_loggers(*extra_roots: str, level: int = logging.WARNING) -> list[str]:
    """Set ``level`` on every existing logger whose name starts with one of
    ``HTTP_LOGGER_PREFIXES`` or ``extra_roots`` (e.g. the top-level module of the client's
    transport, found at run time), and on those roots themselves, so loggers created later
    under them inherit it. Returns the names set."""
    roots = {r.split(".")[0] for r in extra_roots if r} | set(HTTP_LOGGER_PREFIXES)
    names = [n for n in list(logging.root.manager.loggerDict)
             if any(n == r or n.startswith(r) for r in roots)]
    for name in sorted(set(names) | roots):
        logging.getLogger(name).setLevel(level)
    return sorted(set(names) | roots)


class ChatFailure(Exception):
    """Why a chat reply failed: ``cause`` (the reply record's ``cause``, see the module doc; also
    ``"stopped"`` when the worker stopped, ``"error"`` for anything unforeseen), ``detail`` (a
    human-readable explanation, may quote the server: redact before logging), ``retry_after``
    (seconds from a 429's Retry-After header, or None)."""

    def __init__(self, cause: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(cause, detail)
        self.cause, self.detail, self.retry_after = cause, detail, retry_after


class _Malformed(Exception):
    pass


def classify_failure(exc: BaseException) -> ChatFailure:
    """The :class:`ChatFailure` for an exception of the SDK, its transport or the stream parser
    (a ChatFailure is returned as it is). Never raises."""
    import openai

    if isinstance(exc, ChatFailure):
        return exc
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        retry = None
        if code == 429:
            try:
                retry = float(exc.response.headers.get("retry-after", ""))
            except ValueError:
                retry = None
        cause = f"http_{code}" if code < 500 else "http_5xx"
        return ChatFailure(cause, f"HTTP {code}: {exc.message}", retry)
    if isinstance(exc, openai.APITimeoutError):
        return ChatFailure("timeout", "connect or read timeout")
    if isinstance(exc, openai.APIConnectionError):
        root: BaseException = exc
        for _ in range(8):  # the transport error the SDK wrapped, e.g. "[Errno 111] Connection refused"
            nxt = root.__cause__ or root.__context__
            if nxt is None:
                break
            root = nxt
        return ChatFailure("unreachable", f"{exc.message} ({type(root).__name__}: {root})")
    if isinstance(exc, (_Malformed, json.JSONDecodeError, ValueError, AttributeError, TypeError,
                        KeyError, IndexError)):
        return ChatFailure("malformed_stream", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        return ChatFailure("stream_error", str(exc))
    return ChatFailure("error", f"{type(exc).__name__}: {exc}")


def _chunk_text(chunk: Any) -> str:
    """The content delta of one ChatCompletionChunk; raise _Malformed when it is not one."""
    choices = getattr(chunk, "choices", None)
    if not isinstance(choices, list):
        raise _Malformed(f"chunk without choices: {str(chunk)[:80]!r}")
    if not choices:
        return ""  # e.g. a usage-only chunk
    delta = getattr(choices[0], "delta", None)
    content = getattr(delta, "content", None) if delta is not None else None
    if content is None:
        return ""
    if not isinstance(content, str):
        raise _Malformed(f"non-text content {type(content).__name__}")
    return content


class ChatStream:
    """Runs one streamed request in a short-lived thread and queues its tokens, so the worker
    can enforce wall-clock deadlines (the SDK's read timeout only bounds gaps between bytes;
    a server that sends a role-only chunk at once and then nothing would never trip it).

    ``client``: an ``openai.OpenAI``; ``messages``: from ``prompt.build_messages``; ``clock``:
    seconds, monotonic. :attr:`q` receives ``(kind, payload, t)``: ``("token", text, t)`` per
    non-empty delta, then ``("end", None, t)`` or ``("error", exception, t)`` (classify it with
    :func:`classify_failure`); ``t`` is the arrival time. At most :func:`max_reply_chars`
    characters are queued (then ``oversized_stream``).
    """

    def __init__(self, client: Any, chat: ChatConfig, messages: list[dict[str, str]],
                 clock: Callable[[], float]) -> None:
        self._client, self._chat, self._messages, self._clock = client, chat, messages, clock
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name="reply-chat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stream = None
        try:
            stream = self._client.chat.completions.create(
                model=self._chat.model, messages=self._messages, max_tokens=self._chat.max_tokens,
                temperature=self._chat.temperature, stream=True,
                # these two are added per request unless the request itself omits them
                extra_headers={h: _omit() for h in _SDK_HEADERS[-2:]})
            self._stream = stream
            budget = max_reply_chars(self._chat)
            for chunk in stream:
                if self._cancel.is_set():
                    return
                text = _chunk_text(chunk)
                if len(text) > budget:  # a hostile or broken endpoint: keep what fits, stop
                    if budget:
                        self.q.put(("token", text[:budget], self._clock()))
                    self.q.put(("error", ChatFailure(
                        "oversized_stream", f"reply longer than {max_reply_chars(self._chat)} "
                        "characters"), self._clock()))
                    return
                if text:
                    budget -= len(text)
                    self.q.put(("token", text, self._clock()))
            self.q.put(("end", None, self._clock()))
        except BaseException as exc:  # noqa: BLE001 - handed to the worker, which classifies
            if not self._cancel.is_set():
                self.q.put(("error", exc, self._clock()))
        finally:
            if stream is not None:
                try:
                    stream.close()
                except Exception:
                    pass

    def cancel(self) -> None:
        """Abandon the request; the thread ends at its next chunk or its read timeout."""
        self._cancel.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass


# --------------------------------------------------------------------------- endpoint state

class ChatEndpoint:
    """The chat endpoint as the reply worker sees it: its client, the API key, its outage.

    ``clock``: seconds, monotonic (outage start, retry deadline); ``environ``: where the key is
    looked up (``os.environ`` when None; the mapping is read again at every :meth:`configure`).
    Thread-safe.
    """

    def __init__(self, clock: Callable[[], float], environ: Mapping[str, str] | None = None) -> None:
        self._clock = clock
        self.environ = environ
        self._lock = threading.Lock()
        self._client: Any = None
        self._key: str | None = None
        self._ident: tuple | None = None
        self._outage: dict | None = None
        self._retry_at = float("-inf")

    @property
    def client(self) -> Any:
        """The ``openai.OpenAI`` client, or None: chat disabled, or no key for a remote endpoint."""
        return self._client

    def state(self) -> tuple[Any, float, str | None]:
        """``(client, retry_at, cause)``: the client (or None), the ``clock`` time (s) before
        which the endpoint is not asked again, and the cause of the current outage (or None)."""
        with self._lock:
            return self._client, self._retry_at, (self._outage or {}).get("cause")

    def redact(self, text: str) -> str:
        """``text`` with the API key and every other registered secret replaced by ``[redacted]``."""
        key = self._key
        if key and key in text:
            text = text.replace(key, "[redacted]")
        return scrub(text)

    def configure(self, chat: ChatConfig) -> None:
        """(Re)build the client when ``chat.enabled``, ``base_url``, the key or the timeouts
        changed (always the first time); logs what replies will use. An unchanged endpoint keeps
        its client (and keep-alive connection) and its outage state. The key is read (see
        :func:`read_api_key`) and registered with ``redsg_edge.redact`` every time."""
        key = read_api_key(chat, self.environ)
        register_secret(key)  # every log handler scrubs it from here on (redsg_edge.redact)
        ident = (chat.enabled, chat.base_url, key, chat.connect_timeout_s, chat.first_token_timeout_s)
        if ident == self._ident:
            return
        self._ident = ident
        client = None
        local = is_local_url(chat.base_url)
        if chat.enabled and (key or local):
            import openai

            # The worker's own wall-clock deadlines name the cause (first_token_timeout, stall);
            # read= is only the backstop that ends the stream thread, so it is set a little
            # later: at the same instant, a loaded CPU let it win the race as a bare "timeout".
            timeout = openai.Timeout(connect=chat.connect_timeout_s,
                                     read=chat.first_token_timeout_s + _READ_TIMEOUT_SLACK_S,
                                     write=chat.connect_timeout_s, pool=chat.connect_timeout_s)
            client = openai.OpenAI(base_url=chat.base_url, api_key=key or LOCAL_PLACEHOLDER_KEY,
                                   timeout=timeout, max_retries=0,
                                   default_headers=request_headers())
            quiet_http_loggers(type(client._client).__module__)
        with self._lock:
            # The old client is not closed here: a reply may still be streaming through it.
            self._client, self._key = client, key
            self._outage, self._retry_at = None, float("-inf")
        if not chat.enabled:
            log.info("chat disabled (reply.chat.enabled = false): offline replies only")
        elif client is None:
            log.warning("no API key for %s (file $CREDENTIALS_DIRECTORY/openai_api_key or env %s): "
                        "offline replies only", chat.base_url, chat.api_key_env)
        else:
            log.info("chat endpoint %s, model %s%s", chat.base_url, chat.model,
                     "" if key else " (local, placeholder key)")

    def failed(self, f: ChatFailure, chat: ChatConfig) -> None:
        """Count a failed request: log it (once per outage, see the module doc) and do not ask
        again for ``chat.retry_after_s`` or the 429's Retry-After (at most an hour)."""
        now = self._clock()
        detail = self.redact(f.detail)
        with self._lock:
            o = self._outage
            if o is None:
                self._outage = {"cause": f.cause, "since": now, "failures": 1}
                log.warning("chat endpoint %s failed (%s: %s); speaking offline replies until it "
                            "answers again", chat.base_url, f.cause, detail)
            else:
                o["failures"] += 1
                if f.cause != o["cause"]:
                    log.info("chat endpoint still failing, now %s: %s", f.cause, detail)
                    o["cause"] = f.cause
                else:
                    log.debug("chat endpoint still failing (%s, %d failures)", f.cause, o["failures"])
            self._retry_at = now + max(chat.retry_after_s, min(f.retry_after or 0.0, 3600.0))

    def succeeded(self, chat: ChatConfig) -> None:
        """End the outage, if any, and log the recovery (INFO)."""
        with self._lock:
            o, self._outage = self._outage, None
        if o is not None:
            log.info("chat endpoint %s answering again after %d failed request(s) over %.0f s "
                     "(last cause %s)", chat.base_url, o["failures"], self._clock() - o["since"],
                     o["cause"])
