"""How certctl talks to an ACME server: retried requests, problem documents with status, and one
``Connection`` per issuer that every order shares: a pool of kept-alive HTTP connections (no TCP and TLS
handshake per order) and a pool of unused nonces (every answer's ``Replay-Nonce``, error answers
included, is kept for the next request, so a request seldom needs its own ``HEAD newNonce``)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from acme import errors as acme_errors
from acme import jws, messages
from acme.client import ClientNetwork, ClientV2
from josepy.errors import DeserializationError
from josepy.json_util import field
from josepy.jwa import ES256, JWASignature
from josepy.jwk import JWK
from requests.adapters import HTTPAdapter
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies, parse_header_links

from reconciler.adapters.issuers.acme import retry
from reconciler.adapters.issuers.acme.retry import RetryPolicy

USER_AGENT = "certctl/0.1 (acme-python)"
NONCE_POOL = 256  # unused nonces kept per issuer (the oldest are dropped first)
NONCE_MAX_AGE = (
    60.0  # seconds an unused nonce is kept (CAs expire them; a stale one costs a badNonce round trip)
)


class NoncePool:
    """Unused nonces of one CA, shared by every order of an issuer (thread-safe); the freshest is used first."""

    def __init__(self, size: int = NONCE_POOL, max_age: float = NONCE_MAX_AGE) -> None:
        self._items: deque[tuple[float, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.max_age = max_age

    def put(self, nonce: Any) -> None:
        with self._lock:
            self._items.append((time.monotonic(), nonce))

    def take(self) -> Any:
        """The freshest unused nonce, or None (then a HEAD newNonce fetches one)."""
        oldest = time.monotonic() - self.max_age
        with self._lock:
            while self._items:
                seen, nonce = self._items.pop()
                if seen >= oldest:
                    return nonce
                self._items.clear()  # everything older is older still
            return None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class _Session(requests.Session):
    """A requests session that reads the environment's settings (``HTTPS_PROXY``, ``NO_PROXY``,
    ``REQUESTS_CA_BUNDLE``) once per host, not before every request: requests would otherwise scan the
    whole environment twice per request, which costs more CPU than the request itself."""

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[str, tuple[dict[str, str], str | None]] = {}

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if not self.trust_env or (proxies and proxies.get("no_proxy")):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(str(url))
        origin = f"{parts.scheme}://{parts.netloc}"
        known = self._environment.get(origin)
        if known is None:
            known = self._environment[origin] = (
                get_environ_proxies(origin),
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"),
            )
        environ_proxies, environ_bundle = known
        proxies = dict(proxies or {})
        for scheme, proxy in environ_proxies.items():
            proxies.setdefault(scheme, proxy)
        if (verify is True or verify is None) and environ_bundle:
            verify = environ_bundle
        return {
            "proxies": merge_setting(proxies, self.proxies),
            "stream": merge_setting(stream, self.stream),
            "verify": merge_setting(verify, self.verify),
            "cert": merge_setting(cert, self.cert),
        }


class AnswerTime:
    """How long a CA typically takes to answer one request: a moving average (thread-safe enough: one float)."""

    WEIGHT = 0.2  # of each new request

    def __init__(self) -> None:
        self.value: float | None = None

    def observe(self, seconds: float) -> None:
        current = self.value
        self.value = seconds if current is None else current + self.WEIGHT * (seconds - current)


class Connection:
    """What every order of one issuer shares: kept-alive HTTP connections, the nonce pool, and how long
    the CA takes to answer."""

    def __init__(self, pool_size: int = 64) -> None:
        self.session = _Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.nonces = NoncePool()
        self.answer_time = AnswerTime()

    def close(self) -> None:
        self.session.close()


class NewOrder(messages.NewOrder):
    """newOrder with RFC 9773 ``replaces`` (the ARI identifier of the certificate being renewed)."""

    replaces: str | None = field("replaces", omitempty=True)


class Network(ClientNetwork):
    """ClientNetwork whose every request is retried on transient failures, and whose problem
    documents keep their HTTP status and Retry-After. Given a ``Connection``, it uses that one's HTTP
    connections and nonces (shared with the other orders of the issuer) instead of its own."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        key: JWK | None = None,
        alg: JWASignature = ES256,
        verify: bool | str = True,
        timeout: float = 30.0,
        connection: Connection | None = None,
    ) -> None:
        super().__init__(key=key, alg=alg, verify_ssl=verify, user_agent=USER_AGENT, timeout=timeout)  # type: ignore[arg-type]
        self.policy = policy
        self.shared = connection is not None
        if connection is not None:
            self.session.close()
            self.session = connection.session
        self.nonces = connection.nonces if connection is not None else NoncePool()
        self.answer_time = connection.answer_time if connection is not None else AnswerTime()

    def close(self) -> None:
        """Close this network's own HTTP connections (a shared ``Connection`` stays open for the next order)."""
        if not self.shared:
            self.session.close()

    def __del__(self) -> None:
        self.close()

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        started = time.monotonic()
        response = super()._send_request(method, url, *args, **kwargs)
        self.answer_time.observe(time.monotonic() - started)
        if not response.ok and self.REPLAY_NONCE_HEADER in response.headers:
            with contextlib.suppress(
                acme_errors.BadNonce
            ):  # a refusal (badNonce included) hands out a good nonce
                self.nonces.put(self._decoded_nonce(response))
        return response

    def _decoded_nonce(self, response: requests.Response) -> Any:
        if self.REPLAY_NONCE_HEADER not in response.headers:
            raise acme_errors.MissingNonce(response)
        nonce = response.headers[self.REPLAY_NONCE_HEADER]
        try:
            return jws.Header._fields["nonce"].decode(nonce)
        except DeserializationError as error:
            raise acme_errors.BadNonce(nonce, error) from None

    def _add_nonce(self, response: requests.Response) -> None:
        self.nonces.put(self._decoded_nonce(response))

    def _get_nonce(self, url: str, new_nonce_url: str) -> Any:
        nonce = self.nonces.take()
        if nonce is not None:
            return nonce
        return self._decoded_nonce(self._check_response(self.head(new_nonce_url or url), content_type=None))

    @classmethod
    def _check_response(
        cls, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        try:
            return super()._check_response(response, content_type=content_type)
        except messages.Error as exc:
            exc.http_status = response.status_code
            exc.retry_after_header = response.headers.get("Retry-After")
            raise

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        url = args[0] if args else kwargs.get("url")
        return retry.call(self.policy, f"POST {url}", super().post, *args, **kwargs)

    def get(
        self, url: str, content_type: str = ClientNetwork.JSON_CONTENT_TYPE, **kwargs: Any
    ) -> requests.Response:
        return retry.call(self.policy, f"GET {url}", super().get, url, content_type=content_type, **kwargs)


@dataclass
class Session:
    net: Network
    client: ClientV2
    directory: messages.Directory
    key: JWK

    def post(self, url: str, obj: Any) -> requests.Response:
        return self.net.post(url, obj, new_nonce_url=self.directory["newNonce"])

    def get_as_post(self, url: str) -> requests.Response:
        return self.net.post(url, None, new_nonce_url=self.directory["newNonce"])

    @property
    def answer_time(self) -> AnswerTime:
        return self.net.answer_time


def links(response: requests.Response, rel: str) -> list[str]:
    header = response.headers.get("Link")
    if not header:
        return []
    return [link["url"] for link in parse_header_links(header) if link.get("rel") == rel and link.get("url")]


def directory_entry(directory: messages.Directory, name: str) -> str | None:
    try:
        value = directory[name]
    except KeyError:
        return None
    return value if isinstance(value, str) and value else None


def status_name(status: messages.Status | None) -> str:
    return str(status.name) if status is not None else "unknown"


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
