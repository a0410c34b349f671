"""The service's HTTP plumbing: JSON errors, API keys, what a browser may send, security headers.

- **Errors** are JSON ``{"error": {"param", "message"}}`` (:class:`ApiError`), also for what uvicorn
  refuses before the app sees it (a malformed request line, ``Content-Length: abc``, a 1 MB URL):
  :class:`JsonErrorH11Protocol`.  Messages never carry the server's own folders (:func:`public`).
- **Keys**, on the model of Algolia's admin and search-only keys (:class:`Keys`): endpoints that change
  state (``POST /products``, ``DELETE /products/{id}``, ``DELETE /users/{id}``, ``POST /admin/reload``) need
  ``Authorization: Bearer <ECOMSEARCH_ADMIN_KEY>`` and answer 403 naming that variable while it is unset;
  search, facets, events and metrics are open unless ``ECOMSEARCH_SEARCH_KEY`` is set, then need it (or the
  admin key).  Keys are compared in constant time and never logged or echoed.
- **Browsers**: a body must be ``application/json`` (415 otherwise: an HTML form or a ``text/plain`` fetch
  from another site cannot write); a request from a page of another origin is refused unless the origin is in
  ``serve.cors_origins`` (then CORS headers allow it); every response carries ``X-Content-Type-Options:
  nosniff``, the page a Content-Security-Policy that runs its own script only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol

# uvicorn reads a request line and headers of up to this many bytes whole (and so can answer a 1 MB URL with a
# JSON error instead of resetting the connection mid-request); the app refuses a query string over MAX_URL_QUERY
MAX_REQUEST_HEAD = 2 << 20
MAX_URL_QUERY = 16 << 10
ADMIN_ENV = "ECOMSEARCH_ADMIN_KEY"
SEARCH_ENV = "ECOMSEARCH_SEARCH_KEY"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


class ApiError(Exception):
    def __init__(self, status: int, param: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.message, self.headers = status, param, message, headers


def query_filters(category, brand, price_min, price_max, **numbers) -> dict:
    """The filters of a request's query parameters (a repeated ``category``/``brand`` is a list, a single one a
    string); a price (or another number in ``numbers``) that is not finite is a 422 naming it."""
    import math

    for name, value in (("price_min", price_min), ("price_max", price_max), *numbers.items()):
        if value is not None and not math.isfinite(value):
            raise ApiError(422, name, f"must be a finite number, got {value}")
    filters = {
        "category": category[0] if category and len(category) == 1 else category,
        "brand": brand[0] if brand and len(brand) == 1 else brand,
        "price_min": price_min,
        "price_max": price_max,
    }
    return {f: v for f, v in filters.items() if v is not None}


def error_response(status: int, param: str | None, message: str, headers: dict | None = None, **extra):
    from fastapi.responses import JSONResponse

    body = {"error": {"param": param, "message": message, **extra}}
    return JSONResponse(body, status_code=status, headers=headers)


def public(message: str, *roots) -> str:
    """``message`` without the server's folders (``roots``: the project root, the index folder, the temp
    folder): a client learns what is wrong, not where the server keeps its files."""
    for root in sorted({str(r).rstrip("/") for r in roots if r and str(r).rstrip("/")}, key=len, reverse=True):
        message = message.replace(root + "/", "").replace(root, ".")  # a root of "/" names nothing: skipped
    return message


@dataclass(frozen=True)
class Keys:
    """The service's API keys (None: not set)."""

    admin: str | None = None
    search: str | None = None

    @classmethod
    def from_env(cls) -> "Keys":
        return cls(os.environ.get(ADMIN_ENV) or None, os.environ.get(SEARCH_ENV) or None)

    def require_admin(self, authorization: str | None) -> None:
        if self.admin is None:
            raise ApiError(
                403,
                "authorization",
                f"admin endpoints are off: set the environment variable {ADMIN_ENV} "
                "on the server and send Authorization: Bearer <that key>",
            )
        if not _matches(authorization, self.admin):
            raise ApiError(
                401,
                "authorization",
                "this endpoint needs the admin key: Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def require_search(self, authorization: str | None) -> None:
        if self.search is None:
            return
        if not (
            _matches(authorization, self.search) or (self.admin is not None and _matches(authorization, self.admin))
        ):
            raise ApiError(
                401,
                "authorization",
                "this service needs a search key: Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )


def _matches(authorization: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``key`` as a bearer token, in constant time."""
    scheme, _, token = (authorization or "").partition(" ")
    given = token.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(key.encode("utf-8")).digest())


def check_origin(method: str, headers, allowed: list[str]) -> None:
    """Refuse a state-changing request a page of another origin sent (``Origin`` set, not this host, not in
    ``serve.cors_origins``); requests without ``Origin`` (curl, servers) pass."""
    origin = headers.get("origin")
    if method not in WRITES or origin is None or origin in allowed or "*" in allowed:
        return
    host = headers.get("host", "")
    if re.sub(r"^https?://", "", origin) == host:
        return  # the service's own page
    raise ApiError(
        403,
        "origin",
        f"requests from {origin[:100]!r} are not allowed; add the origin to serve.cors_origins in the config",
    )


def check_url(query_string: bytes) -> None:
    if len(query_string) > MAX_URL_QUERY:
        raise ApiError(414, "request", f"a query string of {len(query_string):,} bytes; at most {MAX_URL_QUERY:,}")


def check_json_body(method: str, headers) -> None:
    """A request with a body must say it is JSON (a form or text/plain post from another site cannot)."""
    if method not in WRITES:
        return
    has_body = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
    if not has_body:
        return
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "content-type", f"send the body as application/json, not {media or 'no type'!r}")


def security_headers(response, page: bool = False, script_hashes: tuple[str, ...] = ()) -> None:
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if page:
        scripts = " ".join(f"'sha256-{h}'" for h in script_hashes) or "'none'"
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )
        response.headers["X-Frame-Options"] = "DENY"


def inline_script_hashes(html: str) -> tuple[str, ...]:
    """The CSP hashes of a page's inline scripts (the page's own code runs; an injected script does not)."""
    return tuple(
        base64.b64encode(hashlib.sha256(m.encode("utf-8")).digest()).decode()
        for m in re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    )


def parse_json(body: bytes):
    """A request body as JSON, or a 400 saying why (also for what ``json`` itself cannot take: 50,000 nested
    brackets, an integer of 5,000 digits)."""
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "body", f"malformed JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "body", "JSON nested too deeply") from None
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise ApiError(400, "body", f"unreadable JSON value: {str(e)[:120]}") from None


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, answering what it refuses before the app (a malformed or oversized
    request line or header, a non-numeric Content-Length) with the service's JSON error instead of text."""

    def send_400_response(self, msg: str) -> None:
        import h11

        body = json.dumps(
            {"error": {"param": "request", "message": f"malformed or oversized HTTP request ({msg.rstrip('.')})"}}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-content-type-options", b"nosniff"),
        ]
        self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()
