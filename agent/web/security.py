"""Access token, CSRF token, allowed hosts and response headers of the review workspace.

The workspace serves loopback by default, and a page on any website can make the user's browser
send requests to loopback: through DNS rebinding (a name the attacker controls that resolves to
127.0.0.1) those requests are same-origin for the browser. Every request must therefore name an
allowed host in its ``Host`` header (:func:`allowed_hosts`: the bound host, ``localhost``,
``127.0.0.1``, ``[::1]`` and what ``rankscope serve --allowed-host`` adds; anything else is a 400),
and a state-changing request that carries an ``Origin`` must come from an allowed host on the same
port (compared with the allow-list, never with the ``Host`` header the attacker chose). The
network model is written down in ``docs/threat_model.md``."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Iterable
from html import escape
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse

ENV_TOKEN = "RANKSCOPE_SERVE_TOKEN"
TOKEN_COOKIE = "rankscope_token"
TOKEN_PARAM = "token"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[Request], Awaitable[Response]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
"""The host names every workspace answers to (``[::1]`` is written without brackets here)."""
_UNSPECIFIED = ("0.0.0.0", "::", "")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def host_name(value: str) -> str | None:
    """The host name of a ``Host`` header or an origin's netloc, lower-case, without port,
    brackets or a trailing dot; ``None`` when it does not parse."""
    split = _split_netloc(value)
    return None if split is None else split[0]


def _split_netloc(value: str) -> tuple[str, int | None] | None:
    if not value or any(c in value for c in "/?#@\\ \t"):
        return None
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    name = (parts.hostname or "").rstrip(".")
    return (name, port) if name else None


def allowed_hosts(bound: str | None = None, extra: Iterable[str] = ()) -> frozenset[str]:
    """The host names the workspace answers to: loopback's, the bound host (unless it is an
    unspecified address such as ``0.0.0.0``) and ``extra`` (``--allowed-host``)."""
    names = set(LOOPBACK_NAMES)
    for value in (bound, *extra):
        if value is None or value.strip("[]") in _UNSPECIFIED:
            continue
        name = host_name(value) or host_name(f"[{value}]")
        if name is None:
            raise ValueError(f"not a host name: {value!r}")
        names.add(name)
    return frozenset(names)


def allow_hosts(app: Any, bound: str | None = None, extra: Iterable[str] = ()) -> frozenset[str]:
    """Set the hosts ``app`` answers to (default: :data:`LOOPBACK_NAMES` only); returns them."""
    hosts = allowed_hosts(bound, extra)
    app.state.allowed_hosts = hosts
    return hosts


def _hosts_of(request: Request) -> frozenset[str]:
    hosts = getattr(request.app.state, "allowed_hosts", None)
    return hosts if hosts is not None else frozenset(LOOPBACK_NAMES)


def _refused_host(host: str, hosts: frozenset[str]) -> HTMLResponse:
    # A plain page on purpose: nothing of the workspace (no CSRF token, no data) goes to a host
    # that is not allowed.
    names = ", ".join(sorted(f"[{h}]" if ":" in h else h for h in hosts))
    message = (
        f"This workspace does not answer to the host {host!r}. It answers to {names}. "
        "If you reached it through another name on purpose, restart it with "
        "`rankscope serve --allowed-host NAME`."
    )
    html = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Host not allowed'
        " · RankScope review</title></head><body><h1>Host not allowed <small>HTTP 400</small>"
        f'</h1><p role="alert">{escape(message)}</p></body></html>'
    )
    return HTMLResponse(html, status_code=400)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def same(a: str | None, b: str) -> bool:
    """Constant-time string comparison."""
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class TokenGate:
    """Require the access token on every request: ``?token=``, the cookie it sets, or an
    ``Authorization: Bearer`` header."""

    def __init__(self, token: str) -> None:
        self.token = token

    def presented(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.query_params.get(TOKEN_PARAM) or request.cookies.get(TOKEN_COOKIE)

    async def __call__(self, request: Request, call_next: Handler) -> Response:
        if not same(self.presented(request), self.token):
            return PlainTextResponse("a valid access token is required", status_code=401)
        response = await call_next(request)
        if request.query_params.get(TOKEN_PARAM):
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        return response


def _same_site_origin(origin: str, host: tuple[str, int | None], hosts: frozenset[str]) -> bool:
    """Whether a state-changing request's ``Origin`` is one of this workspace's own: an allowed
    host name and, when the ``Host`` header names a port, that port."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    name = (parts.hostname or "").rstrip(".")
    if parts.scheme not in _DEFAULT_PORTS or name not in hosts:
        return False
    if host[1] is None:
        return True
    return (port if port is not None else _DEFAULT_PORTS[parts.scheme]) == host[1]


def _foreign_origin(
    origin: str | None, host: tuple[str, int | None], hosts: frozenset[str]
) -> bool:
    """Whether an ``Origin`` header names another site (absent and ``null`` do not: our own
    pages send no referrer, and the CSRF token still has to match)."""
    return bool(origin) and origin != "null" and not _same_site_origin(str(origin), host, hosts)


async def security_headers(request: Request, call_next: Handler) -> Response:
    """Refuse a request to a host that is not allowed (400) and a cross-origin state-changing
    request (403); add the CSP and friends."""
    hosts = _hosts_of(request)
    raw_host = request.headers.get("host", "")
    host = _split_netloc(raw_host)
    response: Response
    if host is None or host[0] not in hosts:
        response = _refused_host(raw_host, hosts)
    elif request.method not in ("GET", "HEAD", "OPTIONS") and (
        request.headers.get("sec-fetch-site") == "cross-site"
        or _foreign_origin(request.headers.get("origin"), host, hosts)
    ):
        response = PlainTextResponse("cross-origin request refused", status_code=403)
    else:
        response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
