"""How certctl talks to an ACME server: retried requests, problem documents with status, one session per order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from acme import messages
from acme.client import ClientNetwork, ClientV2
from josepy.json_util import field
from josepy.jwa import ES256, JWASignature
from josepy.jwk import JWK
from requests.utils import parse_header_links

from reconciler.adapters.issuers.acme import retry
from reconciler.adapters.issuers.acme.retry import RetryPolicy

USER_AGENT = "certctl/0.1 (acme-python)"


class NewOrder(messages.NewOrder):
    """newOrder with RFC 9773 ``replaces`` (the ARI identifier of the certificate being renewed)."""

    replaces: str | None = field("replaces", omitempty=True)


class Network(ClientNetwork):
    """ClientNetwork whose every request is retried on transient failures, and whose problem
    documents keep their HTTP status and Retry-After."""

    def __init__(self, policy: RetryPolicy, *, key: JWK | None = None, alg: JWASignature = ES256,
                 verify: bool | str = True, timeout: float = 30.0) -> None:
        super().__init__(key=key, alg=alg, verify_ssl=verify, user_agent=USER_AGENT, timeout=timeout)  # type: ignore[arg-type]
        self.policy = policy

    @classmethod
    def _check_response(cls, response: requests.Response, content_type: str | None = None) -> requests.Response:
        try:
            return super()._check_response(response, content_type=content_type)
        except messages.Error as exc:
            exc.http_status = response.status_code
            exc.retry_after_header = response.headers.get("Retry-After")
            raise

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        url = args[0] if args else kwargs.get("url")
        return retry.call(self.policy, f"POST {url}", super().post, *args, **kwargs)

    def get(self, url: str, content_type: str = ClientNetwork.JSON_CONTENT_TYPE, **kwargs: Any) -> requests.Response:
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
