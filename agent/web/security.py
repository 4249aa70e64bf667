"""Access token, CSRF token and response headers of the review workspace."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import Request, Response
from fastapi.responses import PlainTextResponse

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


async def security_headers(request: Request, call_next: Handler) -> Response:
    """Add the CSP and friends; refuse cross-origin form posts."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            return PlainTextResponse("cross-origin request refused", status_code=403)
    response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
