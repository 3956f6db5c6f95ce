"""Optional API keys: VAE_API_KEYS and VAE_API_KEYS_FILE (off unless one is set).

With keys on, every request needs `Authorization: Bearer <key>` or `X-API-Key: <key>`, except
the explorer page and its assets (GET /, /static/...), the API docs (/docs, /redoc,
/openapi.json: the page asks for the key, /docs has an Authorize button), and the probes
(/healthz, /readyz and the Open Inference Protocol's /v2/health/live, /v2/health/ready) and
/metrics unless VAE_AUTH_PROBES / VAE_AUTH_METRICS say otherwise. Default deny: a route added
later, or a path that matches nothing, needs a key too. A key in the query string is never
looked at (URLs end up in logs, histories and Referer headers).

A missing or wrong key is a 401 with `WWW-Authenticate: Bearer` and a `detail` that says
nothing about the keys. The comparison takes the same time whichever key matches, or none:
the SHA-256 of what the client sent is compared with the SHA-256 of every key, each with
hmac.compare_digest and without stopping at a match (equal-length digests, so not even a key's
length shows). Keys are kept as their digests only, never logged, never in an error message,
and Settings shows them as `**********`.

Model management (the repository extension under /v2/repository: load, unload, index) has
keys of its own, VAE_ADMIN_KEYS and VAE_ADMIN_KEYS_FILE, checked by AdminKeyMiddleware: off
(403) unless they are set; then no key is a 401, an API key a 403, an admin key passes.

Guessing is slowed down: a client address that sent VAE_AUTH_MAX_FAILURES wrong keys (API or
admin) within VAE_AUTH_LOCKOUT seconds gets a 429 with Retry-After for every request needing a
key, whatever it sends, until VAE_AUTH_LOCKOUT seconds have passed since its last wrong key
(`Guesses`; counted per worker process, so N workers allow up to N times as many).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from service.process.api_keys import ApiKeyError, ApiKeys, load_api_keys, read_key_file

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "AdminKeyMiddleware",
    "ApiKeyError",
    "ApiKeyMiddleware",
    "ApiKeys",
    "Guesses",
    "check_key",
    "document_security",
    "is_protected",
    "load_api_keys",
    "offered_keys",
    "read_key_file",
    "redact_query",
]

KEY_HEADER = "X-API-Key"
# Always open: the explorer page and its assets (its API calls carry the key), the API docs.
OPEN_PATHS = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)
# The Open Inference Protocol's probes are probes too (KServe's kubelet sends no key).
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
METRICS_PATHS = frozenset({"/metrics"})
# Model management: admin keys (AdminKeyMiddleware), never the API keys.
ADMIN_PREFIX = "/v2/repository"
ADMIN_OFF = (
    "model management is off: set VAE_ADMIN_KEYS (or VAE_ADMIN_KEYS_FILE) to load and unload "
    "models while the service runs"
)
ADMIN_MISSING = (
    f"model management needs an admin key: send `Authorization: Bearer <key>` or "
    f"`{KEY_HEADER}: <key>`"
)
ADMIN_WRONG = "the admin key is not valid"
NOT_ADMIN = "this key may call the model routes, not manage models: use an admin key"
LOCKED_OUT = "too many wrong keys from this address: try again later"
OIP_ERROR = "error"  # the Open Inference Protocol's error field (management is under /v2)
_MAX_TRACKED = 10_000  # client addresses whose wrong keys are remembered
MISSING = (
    f"this service needs an API key: send `Authorization: Bearer <key>` or `{KEY_HEADER}: <key>`"
)
WRONG = "the API key is not valid"
_MAX_CANDIDATES = 4  # credentials looked at per request (each is compared with every key)
# OpenAPI security schemes (/docs shows an Authorize button for each).
BEARER_SCHEME = "bearerAuth"
HEADER_SCHEME = "apiKeyHeader"


# Query parameters whose values the access log never shows (keys are not accepted there, but
# a client may still send one that way).
CREDENTIAL_PARAMETERS = frozenset(
    {
        "api_key",
        "apikey",
        "api-key",
        "x-api-key",
        "key",
        "token",
        "access_token",
        "auth",
        "authorization",
        "bearer",
        "password",
        "secret",
    }
)


def redact_query(query: str) -> str:
    """`query` with the values of credential-like parameters replaced by `[redacted]`."""
    if "=" not in query:
        return query
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        if sep and unquote_plus(name).strip().lower() in CREDENTIAL_PARAMETERS:
            part = f"{name}=[redacted]"
        parts.append(part)
    return "&".join(parts)


def is_admin(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def is_protected(path: str, probes: bool = False, metrics: bool = False) -> bool:
    """Whether a request for `path` needs an API key (when keys are on). Management paths need
    an admin key instead (AdminKeyMiddleware)."""
    if is_admin(path):
        return False
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return False
    if path in PROBE_PATHS:
        return probes
    if path in METRICS_PATHS:
        return metrics
    return True


def _credentials(scope: Scope) -> list[bytes]:
    """What the request offers as a key: Bearer tokens and X-API-Key values (never the query)."""
    return offered_keys(scope.get("headers", ()))


def offered_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Bearer tokens and X-API-Key values among (lower-case name, value) pairs: HTTP headers,
    or gRPC call metadata (service/grpc/servicer.py)."""
    found = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                found.append(token.strip())
        elif name == b"x-api-key" and value.strip():
            found.append(value.strip())
    return found[:_MAX_CANDIDATES]


def check_key(keys: ApiKeys, offered: list[bytes]) -> tuple[bool, str]:
    """(allowed, why not) for the credentials a request offers: every one is compared with
    every key, without stopping at a match."""
    if not offered:
        return False, MISSING
    valid = False
    for candidate in offered:
        valid |= keys.matches(candidate)
    return valid, "" if valid else WRONG


class Guesses:
    """Wrong keys by client address: `locked(client)` is the seconds to wait (0: not locked)."""

    def __init__(self, max_failures: int = 10, lockout: float = 60.0) -> None:
        self.max_failures = max_failures
        self.lockout = lockout
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def locked(self, client: str, now: float | None = None) -> float:
        failures = self._failures.get(client)
        if not self.max_failures or failures is None or len(failures) < self.max_failures:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, failures[-1] + self.lockout - now)

    def failed(self, client: str, now: float | None = None) -> None:
        if not self.max_failures:
            return
        now = time.monotonic() if now is None else now
        failures = self._failures.pop(client, None) or deque(maxlen=self.max_failures)
        while failures and now - failures[0] > self.lockout:
            failures.popleft()
        failures.append(now)
        self._failures[client] = failures  # most recent last
        while len(self._failures) > _MAX_TRACKED:
            self._failures.popitem(last=False)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def refuse(
    scope: Scope,
    send: Send,
    status: int,
    detail: str,
    headers: list[tuple[bytes, bytes]],
    field: str = "detail",
) -> None:
    """A JSON refusal, {field: detail}, before the body is read (`Connection: close` when it
    has one)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({field: detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    if _has_body(scope):
        # Do not read (and discard) an upload that will never be used.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(max(1, round(seconds + 0.5))).encode())]


class AdminKeyMiddleware:
    """Model management (/v2/repository...): 403 while no admin key is set; then 401 without
    an admin key, 403 for an API key, 429 for an address guessing (`Guesses`)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeys | None,
        api_keys: ApiKeys | None = None,
        guesses: Guesses | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.api_keys = api_keys
        self.guesses = guesses or Guesses(0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_admin(scope.get("path", "/")):
            await self.app(scope, receive, send)
            return
        if self.keys is None:
            await refuse(scope, send, 403, ADMIN_OFF, [], OIP_ERROR)
            return
        client = _client(scope)
        wait = self.guesses.locked(client)
        if wait:
            await refuse(scope, send, 429, LOCKED_OUT, _retry_after(wait), OIP_ERROR)
            return
        offered = _credentials(scope)
        admin = model_key = False
        for candidate in offered:
            admin |= self.keys.matches(candidate)
            if self.api_keys is not None:
                model_key |= self.api_keys.matches(candidate)
        if admin:
            await self.app(scope, receive, send)
            return
        if model_key:
            await refuse(scope, send, 403, NOT_ADMIN, [], OIP_ERROR)
            return
        if offered:
            self.guesses.failed(client)
        detail = ADMIN_WRONG if offered else ADMIN_MISSING
        await refuse(scope, send, 401, detail, [(b"www-authenticate", b"Bearer")], OIP_ERROR)


class ApiKeyMiddleware:
    """401 for requests to protected paths without a valid key (pure ASGI: bodies are never
    read; a refused request that has one gets `Connection: close`)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: ApiKeys,
        protect_probes: bool = False,
        protect_metrics: bool = False,
        guesses: Guesses | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.protect_probes = protect_probes
        self.protect_metrics = protect_metrics
        self.guesses = guesses or Guesses(0)

    def _path(self, scope: Scope) -> str:
        path: str = scope.get("path", "/")
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        return path

    def authorized(self, scope: Scope) -> tuple[bool, str]:
        """(allowed, why not) for `scope`."""
        if not is_protected(self._path(scope), self.protect_probes, self.protect_metrics):
            return True, ""
        return check_key(self.keys, _credentials(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not is_protected(self._path(scope), self.protect_probes, self.protect_metrics):
            await self.app(scope, receive, send)
            return
        client = _client(scope)
        wait = self.guesses.locked(client)
        if wait:
            await refuse(scope, send, 429, LOCKED_OUT, _retry_after(wait))
            return
        allowed, detail = self.authorized(scope)
        if allowed:
            await self.app(scope, receive, send)
            return
        if detail == WRONG:
            self.guesses.failed(client)
        await refuse(scope, send, 401, detail, [(b"www-authenticate", b"Bearer")])


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (
            name == b"content-length" and value.strip() not in (b"", b"0")
        ):
            return True
    return False


def document_security(
    app: FastAPI, protected: Callable[[str], bool] | None = None
) -> Callable[[], dict[str, Any]]:
    """Declare the two ways to send a key in the OpenAPI document (HTTPBearer and an
    APIKeyHeader), and require one of them on every protected operation, with its 401: /docs
    then shows an Authorize button and sends the key."""
    generate = app.openapi
    needs_key = protected or is_protected

    def openapi() -> dict[str, Any]:
        schema = generate()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "an API key as `Authorization: Bearer <key>`",
        }
        schemes[HEADER_SCHEME] = {
            "type": "apiKey",
            "in": "header",
            "name": KEY_HEADER,
            "description": f"an API key as `{KEY_HEADER}: <key>`",
        }
        for path, operations in schema.get("paths", {}).items():
            if not needs_key(path):
                continue
            for operation in operations.values():
                if not isinstance(operation, dict):
                    continue
                operation["security"] = [{BEARER_SCHEME: []}, {HEADER_SCHEME: []}]
                operation.setdefault("responses", {}).setdefault(
                    "401",
                    {
                        "description": "missing or invalid API key",
                        "headers": {
                            "WWW-Authenticate": {
                                "schema": {"type": "string"},
                                "description": "`Bearer`",
                            }
                        },
                    },
                )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return openapi
