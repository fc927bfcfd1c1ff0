"""Dashboard sessions: a signed, expiring cookie naming the queue, and CSRF tokens.

The cookie (``labtasker_session``; HttpOnly, SameSite=Strict, path ``/ui``) holds the queue
id, a fingerprint of the queue's password hash and a random session nonce, signed with
HMAC-SHA1 by ``itsdangerous`` under the server's secret and dated: older than
``max_age`` seconds it is refused. Every request re-reads the queue's stored hash, so a
changed password or a deleted queue ends the session at once, on every server process.

Actions (POST) must carry the session's CSRF token (``X-CSRF-Token`` header or a
``csrf_token`` form field): an HMAC of the nonce under the secret, so a page of another
site can neither read nor forge it. The log-in form, which comes before any session, is
protected by a short-lived signed token of its own plus the ``Origin`` check.

The secret: ``LABTASKER_UI_SECRET`` when set (the same on every server of a database), else
generated once and stored in the database (``Storage.server_secret``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from labtasker.server.auth import password_fingerprint as fingerprint
from labtasker.server.settings import DEFAULT_UI_SESSION_SECONDS

COOKIE = "labtasker_session"
COOKIE_PATH = "/ui"
SECRET_NAME = "dashboard_session_key"
LOGIN_TOKEN_SECONDS = 3600


# how long a log-in lasts unless ``LABTASKER_UI_SESSION_SECONDS`` says otherwise (settings)
DEFAULT_SESSION_SECONDS = DEFAULT_UI_SESSION_SECONDS


@dataclass(frozen=True)
class Session:
    queue_id: str
    password_fingerprint: str
    nonce: str


class Sessions:
    """Signs and checks session cookies and CSRF tokens with one secret."""

    def __init__(self, secret: str, max_age: float):
        self.max_age = max_age
        self._secret = secret.encode()
        self._cookies = URLSafeTimedSerializer(secret, salt="labtasker-dashboard-session")
        self._login = URLSafeTimedSerializer(secret, salt="labtasker-dashboard-login")

    def issue(self, queue_id: str, password_hash: str) -> str:
        """A new cookie value for ``queue_id`` (fresh nonce: a fresh CSRF token)."""
        return self._cookies.dumps(
            [queue_id, fingerprint(password_hash), secrets.token_urlsafe(16)]
        )

    def read(self, cookie: str | None) -> Session | None:
        """The session in ``cookie``; ``None`` when missing, forged or expired."""
        if not cookie:
            return None
        try:
            queue_id, fp, nonce = self._cookies.loads(cookie, max_age=int(self.max_age))
        except (BadSignature, SignatureExpired, ValueError, TypeError):
            return None
        if not all(isinstance(v, str) for v in (queue_id, fp, nonce)):
            return None
        return Session(queue_id, fp, nonce)

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._secret, b"csrf:" + session.nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf_token(session), token)

    def login_token(self) -> str:
        """A token for the log-in form (there is no session yet)."""
        return self._login.dumps(secrets.token_urlsafe(8))

    def login_token_ok(self, token: str | None) -> bool:
        if not token:
            return False
        try:
            self._login.loads(token, max_age=LOGIN_TOKEN_SECONDS)
        except (BadSignature, SignatureExpired):
            return False
        return True
