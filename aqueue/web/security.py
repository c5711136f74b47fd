"""Who may see the dashboard, and which requests may act.

Authentication (any one configured method lets a request in): HTTP basic auth
(``user:password``), a bearer token, or an ``auth`` hook of the embedding application
(``request -> bool``, sync or async). With none configured every request is let in: the
dashboard then relies on binding to loopback (the default).

Cross-site request forgery: a browser attaches basic-auth credentials and cookies to a
request another site makes it send, so every state-changing request (POST) must come from
this site. Pages' forms carry a token that must match the ``aqueue_csrf`` cookie (the
double-submit pattern), and any POST whose ``Origin`` (or ``Sec-Fetch-Site``) shows another
site is refused. Scripts using Flower's API (curl, requests) send neither header, so they
work unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

#: an embedding application's check: whether the request may see the dashboard
AuthHook = Callable[[Request], bool | Awaitable[bool]]

CSRF_COOKIE = "aqueue_csrf"
CSRF_FIELD = "csrf_token"


def check_basic(header: str, expected: str) -> bool:
    """Whether an ``Authorization: Basic ...`` header carries ``user:password``."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def check_bearer(header: str, token: str) -> bool:
    """Whether an ``Authorization: Bearer ...`` header carries ``token``."""
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


def same_site(request: Request) -> bool:
    """Whether a request did not come from another site (as far as its headers say)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def csrf_token(request: Request) -> str:
    """The request's CSRF token (its cookie's, or a new one the response will set)."""
    token = request.cookies.get(CSRF_COOKIE)
    if not token:
        token = request.state.__dict__.setdefault("new_csrf", secrets.token_urlsafe(24))
    return token


async def form_fields(request: Request) -> dict[str, str]:
    """A urlencoded body's fields (the last of a repeated name); what is not one gives
    none. Parsed here rather than by Starlette, which would need python-multipart."""
    body = await request.body()
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return {}
    return dict(parse_qsl(text, keep_blank_values=True))


def csrf_ok(request: Request, submitted: str | None) -> bool:
    """Whether a form's token matches the cookie."""
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie and submitted and hmac.compare_digest(cookie, submitted))


class AuthMiddleware:
    """Refuse requests that no configured method lets in (401, with the basic-auth
    challenge when basic auth is on), and cross-site POSTs (403)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        basic_auth: str | None = None,
        token: str | None = None,
        auth: AuthHook | None = None,
    ) -> None:
        self.app = app
        self.basic_auth = basic_auth
        self.token = token
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not await self.allowed(request):
            headers = {"WWW-Authenticate": 'Basic realm="aqueue"'} if self.basic_auth else {}
            response: Response = PlainTextResponse("Unauthorized", 401, headers=headers)
            await response(scope, receive, send)
            return
        if request.method not in ("GET", "HEAD", "OPTIONS") and not same_site(request):
            await PlainTextResponse("Cross-site request refused", 403)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def allowed(self, request: Request) -> bool:
        """Whether any configured method lets the request in (all, when none is)."""
        if self.basic_auth is None and self.token is None and self.auth is None:
            return True
        header = request.headers.get("authorization", "")
        if self.basic_auth is not None and check_basic(header, self.basic_auth):
            return True
        if self.token is not None and check_bearer(header, self.token):
            return True
        if self.auth is not None:
            verdict = self.auth(request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            return bool(verdict)
        return False
