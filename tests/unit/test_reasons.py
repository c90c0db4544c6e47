"""A reason names every cause of an issuance, not just the first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.core.model import Attempts, CertInfo, IssuedVersion
from reconciler.core.plan import ActionKind, Reason
from reconciler.core.policies import Input, backing_off, evaluate, spec_digest
from reconciler.core.spec import CertificateSpec, IssuerSpec, Renewal

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = CertificateSpec.model_validate(
    {"issuer": "le", "domains": ["www.example.com"], "key": {"algorithm": "rsa-2048"}}
)


def current(issuer: str = "localca:local", algorithm: str = "ecdsa-p256", days: int = 90) -> IssuedVersion:
    info = CertInfo(
        "A" * 40,
        "b" * 64,
        "www.example.com",
        ("www.example.com",),
        algorithm,
        T0,
        T0 + timedelta(days=days),
        "CN=ca",
        "1f",
    )
    return IssuedVersion("www", info, issuer, T0, ("www.example.com",))


def decide(
    version: IssuedVersion, at: datetime, forced: bool = False
) -> tuple[ActionKind, Reason, str] | None:
    return evaluate(
        Input("www", SPEC, Renewal(lifetimePercent=75), ("acme:https://ca/dir",), version, None, at, forced)
    )


def test_every_cause_is_named_and_the_first_gives_the_code() -> None:
    kind, reason, message = decide(current(), T0 + timedelta(days=1)) or (None, None, "")
    assert kind is ActionKind.reissue and reason is Reason.KeyAlgorithmChanged
    assert message == (
        "key algorithm changed (ecdsa-p256 -> rsa-2048) and "
        "issuer changed (localca:local -> acme:https://ca/dir)"
    )


def test_an_expired_certificate_is_not_also_called_due() -> None:
    _, reason, message = decide(current("acme:https://ca/dir", "rsa-2048"), T0 + timedelta(days=100)) or (
        None,
        None,
        "",
    )
    assert reason is Reason.Expired and message.startswith("certificate expired") and " and " not in message


def test_a_fine_certificate_has_no_reason() -> None:
    assert decide(current("acme:https://ca/dir", "rsa-2048"), T0 + timedelta(days=1)) is None


def test_the_backoff_belongs_to_the_spec_that_failed() -> None:
    name = SPEC.issuers[0]
    issuer = {name: IssuerSpec.model_validate({"localCA": {}})}
    digest = spec_digest(SPEC, issuer)
    retry = Attempts("www", consecutive_failures=1, next_retry=T0 + timedelta(hours=1), spec_digest=digest)
    assert backing_off(retry, digest, T0)
    assert not backing_off(retry, digest, T0 + timedelta(hours=2))
    edited = {name: IssuerSpec.model_validate({"localCA": {"validity": "30d"}})}
    assert not backing_off(retry, spec_digest(SPEC, edited), T0)
    renamed = SPEC.model_copy(update={"domains": ["www.example.com", "example.com"]})
    assert not backing_off(retry, spec_digest(renamed, issuer), T0)
    legacy = Attempts(
        "www", consecutive_failures=1, next_retry=T0 + timedelta(hours=1)
    )  # recorded before digests
    assert backing_off(legacy, digest, T0)


def test_an_edit_of_a_fallback_issuer_also_lifts_the_backoff() -> None:
    spec = SPEC.model_copy(update={"issuer": ["le", "zerossl"]})
    issuers = {
        "le": IssuerSpec.model_validate({"localCA": {}}),
        "zerossl": IssuerSpec.model_validate({"localCA": {}}),
    }
    digest = spec_digest(spec, issuers)
    retry = Attempts("www", consecutive_failures=2, next_retry=T0 + timedelta(hours=2), spec_digest=digest)
    assert backing_off(retry, digest, T0)
    edited = {**issuers, "zerossl": IssuerSpec.model_validate({"localCA": {"validity": "30d"}})}
    assert not backing_off(retry, spec_digest(spec, edited), T0)
