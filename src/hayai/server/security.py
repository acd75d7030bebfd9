"""What keeps a local server local: Host and Origin checks, HTTP Basic auth, and a cap on request bodies.

- **Host** (DNS rebinding): a page on evil.example whose name later resolves to 127.0.0.1 reaches the
  server with `Host: evil.example`. Bound to loopback, the server answers only Host names that mean this
  machine (plus `--allow-host`). With `--listen` it answers any name; set `--api-auth` there.
- **Origin** (a web page posting to localhost): a browser sends the page's Origin; it must be this
  server's own (same host and port, as ComfyUI checks) or one given with `--cors-allow`.
- **Auth**: `--api-auth user:pass[,user2:pass2]` as A1111, HTTP Basic on every route, compared in
  constant time (`secrets.compare_digest`).
- **Body size**: Content-Length over the cap is refused before reading; a chunked body is counted.

Written as plain ASGI middleware so a refused request costs no routing and no body read.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from urllib.parse import urlsplit

__all__ = ["Guard", "parse_auth", "LOOPBACK_NAMES"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def parse_auth(text: str | None) -> list[tuple[str, str]]:
    """`user:pass[,user2:pass2]` -> [(user, pass), ...]."""
    if not text:
        return []
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--api-auth: {item.strip()!r} is not user:password")
        pairs.append((user, password))
    return pairs


class Guard:
    def __init__(self, app, *, allowed_hosts: tuple[str, ...] | None, cors_allow: tuple[str, ...] = (),
                 auth: list[tuple[str, str]] = (), max_body_bytes: int = 64 * 1024 * 1024) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.cors_allow = {o.rstrip("/").lower() for o in cors_allow}
        self.auth = [(u.encode(), p.encode()) for u, p in auth]
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            send = _websocket_refusal(send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            return await _refuse(send, 403, f"Host {host!r} is not this server's name (DNS rebinding protection); "
                                            "start hayai serve with --allow-host NAME to accept it")
        origin = headers.get("origin")
        if origin and origin != "null" and not self._origin_ok(origin, host):
            return await _refuse(send, 403, f"Origin {origin!r} may not call this server; start hayai serve with "
                                            f"--cors-allow {origin} to allow that page")
        if origin == "null":
            return await _refuse(send, 403, "Origin 'null' (a sandboxed page or a local file) may not call this server")
        if scope["type"] == "http" and scope.get("method") == "OPTIONS" and origin and self._cross_allowed(origin):
            return await _preflight(send, origin, headers)  # browsers send a preflight without credentials
        if self.auth and not self._authorized(headers.get("authorization", "")):
            return await _refuse(send, 401, "Not authenticated", {"www-authenticate": 'Basic realm="hayai"'})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _refuse(send, 413, f"request body larger than {self.max_body_bytes // (1024 * 1024)} MB")
        if scope["type"] == "http" and length is None:
            receive = await self._buffered(receive)
            if receive is None:
                return await _refuse(send, 413, f"request body larger than {self.max_body_bytes // (1024 * 1024)} MB")
        await self.app(scope, receive, self._with_cors(send, origin))

    def _origin_ok(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin)
        return parts.netloc.lower() == host.lower() or self._cross_allowed(origin)

    def _cross_allowed(self, origin: str) -> bool:
        return "*" in self.cors_allow or origin.rstrip("/").lower() in self.cors_allow

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok = False
        for known_user, known_password in self.auth:  # every pair compared: the time does not tell which matched
            ok |= secrets.compare_digest(user, known_user) & secrets.compare_digest(password, known_password)
        return ok

    async def _buffered(self, receive):
        """A body sent without Content-Length (chunked), read whole up to the cap and replayed; None past it."""
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_body_bytes:
                return None
            if not message.get("more_body"):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()
        return replayed

    def _with_cors(self, send, origin: str | None):
        if not origin or not self._cross_allowed(origin):
            return send

        async def cors(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"access-control-allow-origin", origin.encode()),
                                      (b"access-control-allow-credentials", b"true"), (b"vary", b"Origin")]
            await send(message)
        return cors


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _refuse(send, status: int, detail: str, extra: dict | None = None) -> None:
    body = json.dumps({"error": "Refused", "detail": detail, "body": None, "errors": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _websocket_refusal(send):
    """A refused WebSocket handshake is closed (policy violation), not answered with an HTTP body."""
    async def refuse(message):
        if message["type"] == "http.response.start":
            await send({"type": "websocket.close", "code": 1008})
        elif message["type"] != "http.response.body":
            await send(message)
    return refuse


async def _preflight(send, origin: str, headers: dict) -> None:
    allow = [(b"access-control-allow-origin", origin.encode()), (b"access-control-allow-credentials", b"true"),
             (b"vary", b"Origin"),
             (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
             (b"access-control-allow-headers", headers.get("access-control-request-headers", "*").encode()),
             (b"access-control-max-age", b"600"), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 204, "headers": allow})
    await send({"type": "http.response.body", "body": b""})
