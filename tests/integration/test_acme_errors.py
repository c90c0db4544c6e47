"""How the issuer behaves when the CA says no, says "try again", or is not there."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters.issuers.acme.issuer import AcmeIssuer
from reconciler.adapters.issuers.acme.retry import RetryPolicy
from reconciler.ports import IssueError, IssueRequest, Material
from reconciler.wiring import build_acme_issuer
from tests.integration.servers import Pebble, acme_spec, free_port, standalone

pytestmark = pytest.mark.integration

EAB_KID = "kid-1"
EAB_KEY = base64.urlsafe_b64encode(secrets.token_bytes(48)).decode().rstrip("=")


def _attempt(issuer: AcmeIssuer, request: IssueRequest) -> Material | IssueError:
    try:
        return issuer.issue(request)
    except IssueError as exc:
        return exc


def test_nonce_rejections_are_retried(
    pebble_factory: Callable[..., Pebble],
    va_http_port: int,
    state_dir: Path,
    log_events: list[dict[str, Any]],
) -> None:
    pebble = pebble_factory(nonce_reject=50)
    issuer = build_acme_issuer("flaky", acme_spec(pebble, [standalone(va_http_port)]), state_dir)
    requests = [
        IssueRequest(f"n{i}", (f"n{i}.example.com", f"www.n{i}.example.com"), "ecdsa-p256") for i in range(4)
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda r: _attempt(issuer, r), requests))
    assert all(isinstance(r, Material) for r in results), results
    retried = [e for e in log_events if e["event"] == "acme.retry"]
    assert retried and all("badNonce" in e["error"] for e in retried)  # Pebble really did refuse nonces
    assert all(e["sleep"] == 0 for e in retried)  # a fresh nonce is retried at once


def test_blocked_name_fails_only_its_own_certificate(
    pebble_factory: Callable[..., Pebble], va_http_port: int, state_dir: Path
) -> None:
    pebble = pebble_factory(blocklist=("blocked.test",))
    issuer = build_acme_issuer("policy", acme_spec(pebble, [standalone(va_http_port)]), state_dir)
    requests = [
        IssueRequest("ok1", ("ok1.example.com",), "ecdsa-p256"),
        IssueRequest("bad", ("www.blocked.test", "fine.example.com"), "ecdsa-p256"),
        IssueRequest("ok2", ("ok2.example.com",), "ecdsa-p256"),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        ok1, bad, ok2 = pool.map(lambda r: _attempt(issuer, r), requests)
    assert isinstance(ok1, Material) and isinstance(ok2, Material)
    assert isinstance(bad, IssueError)
    assert not bad.transient
    assert bad.problem["type"] == "urn:ietf:params:acme:error:rejectedIdentifier"
    assert "www.blocked.test" in str(bad.problem["detail"])
    assert "rejectedIdentifier" in str(bad) and "www.blocked.test" in str(bad)


def _eab_pebble(pebble_factory: Callable[..., Pebble]) -> Pebble:
    return pebble_factory(eab_required=True, eab_keys=((EAB_KID, EAB_KEY),))


def test_external_account_binding(
    pebble_factory: Callable[..., Pebble], va_http_port: int, state_dir: Path
) -> None:
    pebble = _eab_pebble(pebble_factory)
    assert pebble.directory()["meta"]["externalAccountRequired"] is True
    spec = acme_spec(
        pebble, [standalone(va_http_port)], eab={"keyId": EAB_KID, "hmacKey": {"fromEnv": "EAB_HMAC"}}
    )
    issuer = build_acme_issuer("eab", spec, state_dir, environ={"EAB_HMAC": EAB_KEY})
    assert issuer.issue(IssueRequest("e", ("eab.example.com",), "ecdsa-p256")).info.sans == (
        "eab.example.com",
    )
    assert json.loads((state_dir / "acme" / "eab" / "account.json").read_text())["uri"]


def test_wrong_eab_key_is_refused_clearly(
    pebble_factory: Callable[..., Pebble], va_http_port: int, state_dir: Path, tmp_path: Path
) -> None:
    pebble = _eab_pebble(pebble_factory)
    secret_file = tmp_path / "hmac"
    secret_file.write_text(base64.urlsafe_b64encode(secrets.token_bytes(48)).decode().rstrip("=") + "\n")
    spec = acme_spec(
        pebble, [standalone(va_http_port)], eab={"keyId": EAB_KID, "hmacKey": {"fromFile": str(secret_file)}}
    )
    issuer = build_acme_issuer("eab", spec, state_dir)
    with pytest.raises(
        IssueError, match=r"refused the External Account Binding: unauthorized: .*verification error"
    ) as caught:
        issuer.issue(IssueRequest("e", ("eab.example.com",), "ecdsa-p256"))
    assert not caught.value.transient
    assert caught.value.problem["type"] == "urn:ietf:params:acme:error:unauthorized"
    assert not (state_dir / "acme" / "eab" / "account.json").exists()


def test_eab_required_but_not_configured(
    pebble_factory: Callable[..., Pebble], va_http_port: int, state_dir: Path
) -> None:
    issuer = build_acme_issuer(
        "eab", acme_spec(_eab_pebble(pebble_factory), [standalone(va_http_port)]), state_dir
    )
    with pytest.raises(IssueError, match=r"requires External Account Binding; set eab"):
        issuer.issue(IssueRequest("e", ("eab.example.com",), "ecdsa-p256"))


def test_ca_down_is_a_clear_transient_error(va_http_port: int, state_dir: Path, pebble: Pebble) -> None:
    port = free_port()
    spec = acme_spec(pebble, [standalone(va_http_port)], directoryUrl=f"https://127.0.0.1:{port}/dir")
    slept: list[float] = []
    policy = RetryPolicy(attempts=3, budget=3.0, initial=0.1, sleep=slept.append)
    issuer = build_acme_issuer("down", spec, state_dir, retry_policy=policy)
    with pytest.raises(IssueError) as caught:
        issuer.issue(IssueRequest("d", ("down.example.com",), "ecdsa-p256"))
    # the refused request was tried `attempts` times, with short pauses, then the issuer gave up
    assert len(slept) == 2 and all(0 <= s <= 0.2 for s in slept), slept
    assert caught.value.transient
    assert f"https://127.0.0.1:{port}/dir" in str(caught.value)
    assert "connection refused" in str(caught.value)


def test_untrusted_ca_certificate_is_permanent(pebble: Pebble, va_http_port: int, state_dir: Path) -> None:
    spec = acme_spec(pebble, [standalone(va_http_port)], caBundle=None)
    issuer = build_acme_issuer("untrusted", spec, state_dir)
    with pytest.raises(IssueError, match=r"TLS error \(is caBundle right") as caught:
        issuer.issue(IssueRequest("u", ("u.example.com",), "ecdsa-p256"))
    assert not caught.value.transient


def test_account_unknown_to_the_ca_is_registered_again(
    pebble: Pebble, va_http_port: int, state_dir: Path
) -> None:
    issuer = build_acme_issuer("forgot", acme_spec(pebble, [standalone(va_http_port)]), state_dir)
    issuer.issue(IssueRequest("f", ("f.example.com",), "ecdsa-p256"))
    record = state_dir / "acme" / "forgot" / "account.json"
    data = json.loads(record.read_text())
    data["uri"] = data["uri"].rsplit("/", 1)[0] + "/ffffffffffffffff"  # as after a CA that lost its database
    record.write_text(json.dumps(data))
    fresh = build_acme_issuer("forgot", acme_spec(pebble, [standalone(va_http_port)]), state_dir)
    assert fresh.issue(IssueRequest("f", ("f.example.com",), "ecdsa-p256")).info.sans == ("f.example.com",)
    assert json.loads(record.read_text())["uri"] != data["uri"]
