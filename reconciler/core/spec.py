"""The desired-state kinds (docs/reference.md) as immutable pydantic v2 models.

Field names are the YAML names (camelCase); unknown fields are errors. A
relative path is resolved against the folder of the file that holds it (the
loader passes that folder as validation context ``base``).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from enum import StrEnum
from pathlib import PurePath, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from reconciler.core import domains
from reconciler.core.durations import DURATION_PATTERN, format_duration, parse_duration

API_VERSION = "certctl/v1"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_NAME = re.compile(NAME_PATTERN)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


def _duration(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("a duration is written as a string like 90s, 15m, 12h or 30d")


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["90s", "15m", "12h", "30d"]}),
]


def _resolve(value: str, info: ValidationInfo) -> str:
    if not value:
        raise ValueError("a path must not be empty")
    if "\x00" in value:
        raise ValueError("a path must not contain a NUL character")
    base = (info.context or {}).get("base") if info.context else None
    if (
        base
        and not PurePath(value).is_absolute()
        and not PurePosixPath(value).is_absolute()
        and not _is_windows_abs(value)
    ):
        return os.path.normpath(PurePath(base) / value)  # ds/../state is shown as state
    return value


def _is_windows_abs(value: str) -> bool:
    return bool(re.match(r"^[A-Za-z]:[\\/]", value)) or value.startswith("\\\\")


RelPath = Annotated[str, AfterValidator(_resolve), WithJsonSchema({"type": "string", "minLength": 1})]


def _domain(value: Any) -> str:
    return domains.normalize(value)


Domain = Annotated[
    str, BeforeValidator(_domain), WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 253})
]


class SecretRef(Model):
    """A secret is never written in the files: it comes from the environment or from a file."""

    fromEnv: str | None = Field(default=None, min_length=1, description="name of an environment variable")
    fromFile: RelPath | None = Field(default=None, description="path of a file holding the secret")

    @model_validator(mode="before")
    @classmethod
    def _no_literals(cls, data: Any) -> Any:
        if isinstance(data, str | int | float | bytes):
            raise ValueError(
                "secrets must not be written in the files; use {fromEnv: NAME} or {fromFile: PATH}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.fromEnv is None) == (self.fromFile is None):
            raise ValueError("give exactly one of fromEnv or fromFile")
        return self


class Metadata(Model):
    name: str = Field(max_length=63, pattern=NAME_PATTERN, description="unique per kind")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Renewal(Model):
    """When to renew: a share of the certificate's actual lifetime (default 75%), or a time before expiry."""

    lifetimePercent: int | None = Field(default=None, ge=1, le=99)
    beforeExpiry: Duration | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Renewal:
        if (self.lifetimePercent is None) == (self.beforeExpiry is None):
            raise ValueError("give exactly one of lifetimePercent or beforeExpiry")
        return self


DEFAULT_RENEWAL = Renewal(lifetimePercent=75)


# --- Settings -----------------------------------------------------------------


class Webhook(Model):
    url: str | SecretRef = Field(
        description="https?:// URL, or a secret reference when the URL holds a token"
    )
    headers: dict[str, SecretRef] = Field(default_factory=dict, description="header values, from secrets")

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        if isinstance(value, str) and not WEBHOOK_URL.match(value):
            raise ValueError(
                "the webhook url must start with https:// (or http://); "
                "a URL holding a token can be a secret: {fromEnv: NAME} or {fromFile: PATH}"
            )
        return value


WEBHOOK_URL = re.compile(r"^https?://[^/\s?#]+")


class Email(Model):
    smtpHost: str
    smtpPort: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    username: SecretRef | None = None
    password: SecretRef | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _no_clear_text_credentials(self) -> Email:
        if (
            (self.username is not None or self.password is not None)
            and self.smtpPort != IMPLICIT_TLS_PORT
            and not self.starttls
        ):
            raise ValueError(
                f"starttls: false on port {self.smtpPort} would send the SMTP password in clear text; "
                f"use starttls: true, or port {IMPLICIT_TLS_PORT} (implicit TLS)"
            )
        return self


IMPLICIT_TLS_PORT = (
    465  # SMTP submission over TLS from the first byte (RFC 8314); any other port uses STARTTLS
)


def _host_port(value: str, what: str, example: str, check_host: bool = True) -> str:
    host, sep, port = value.rpartition(":")
    if (
        not sep
        or not port.isdigit()
        or not 1 <= int(port) <= 65535
        or (check_host and host and not _HOST.match(host))
    ):
        raise ValueError(f"{what} {value!r} must be host:port with a port from 1 to 65535, e.g. {example}")
    return value


_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)$")


class Notify(Model):
    webhook: Webhook | None = None
    email: Email | None = None
    afterFailures: int = Field(default=3, ge=1, description="alert after this many consecutive failures")
    expiryWarning: Duration = Field(
        default=timedelta(days=7), description="alert when this close to expiry without a renewal"
    )


class Metrics(Model):
    enabled: bool = True
    address: str = Field(
        default="127.0.0.1:9464", description="host:port, [v6]:port or :port (all interfaces)"
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _host_port(value, "metrics address", "127.0.0.1:9464")


NODE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
Node = Annotated[
    str,
    Field(
        max_length=63,
        pattern=NODE_PATTERN,
        description="the node (certctl process, --node) that acts on this; default: every node",
    ),
]


class Postgres(Model):
    """Fleet mode: issuance (versions, encrypted keys, ACME accounts, local CAs, leases) lives in PostgreSQL."""

    dsn: SecretRef = Field(
        description="libpq connection string or postgresql:// URL (a secret: it may hold a password)"
    )
    encryptionKey: SecretRef = Field(
        description="32 bytes, base64: private keys are stored AES-256-GCM encrypted with it"
    )
    leaseTimeout: Duration = Field(
        default=timedelta(seconds=60),
        description="a node that stops renewing its issuance lease loses it after this long",
    )
    connectTimeout: Duration = Field(default=timedelta(seconds=10), description="per connection attempt")

    @field_validator("leaseTimeout")
    @classmethod
    def _lease(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=5):
            raise ValueError("leaseTimeout must be at least 5s (a lease is renewed every quarter of it)")
        return value


class Backend(Model):
    postgres: Postgres | None = None


class SettingsSpec(Model):
    stateDir: RelPath | None = None
    backend: Backend = Field(
        default_factory=Backend,
        description="where issuance state lives: the state dir (default) or postgres (a fleet)",
    )
    renewal: Renewal = DEFAULT_RENEWAL
    reconcileInterval: Duration = timedelta(minutes=5)
    maintenanceInterval: Duration = timedelta(hours=24)
    notify: Notify = Notify()
    prune: bool = False
    cleanupAfter: Duration = Field(
        default=timedelta(days=7),
        description="a superseded certificate is removed this long after its successor was installed",
    )
    concurrency: int = Field(default=8, ge=1, le=64, description="certificates issued in parallel")
    gitPull: bool = False
    metrics: Metrics = Metrics()


# --- Issuer -------------------------------------------------------------------


class LocalCA(Model):
    validity: Duration = Field(default=timedelta(days=90), description="lifetime of issued certificates")
    caValidity: Duration = Field(default=timedelta(days=3650), description="lifetime of the CA certificate")
    commonName: str | None = Field(
        default=None, description="subject of the CA (default: certctl local CA <issuer>)"
    )
    crlPath: RelPath | None = Field(
        default=None, description="also publish the CA's certificate revocation list (PEM) at this path"
    )


class Standalone(Model):
    address: str = "0.0.0.0"
    port: int = Field(default=80, ge=1, le=65535)


class Webroot(Model):
    path: RelPath


class IisWebroot(Model):
    """http-01 answered by an IIS site as shipped: the site that serves the name on port 80 of that host."""

    host: str = Field(description="the IisHost whose site serves the name over http on port 80")


class Http01(Model):
    standalone: Standalone | None = None
    webroot: Webroot | None = None
    iis: IisWebroot | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Http01:
        if sum(x is not None for x in (self.standalone, self.webroot, self.iis)) != 1:
            raise ValueError("give exactly one of standalone, webroot or iis")
        return self


class TsigAlgorithm(StrEnum):
    hmac_sha256 = "hmac-sha256"
    hmac_sha384 = "hmac-sha384"
    hmac_sha512 = "hmac-sha512"
    hmac_sha1 = "hmac-sha1"
    hmac_md5 = "hmac-md5"


class Rfc2136(Model):
    server: str = Field(description="host or host:port of the primary accepting updates")
    zone: Domain
    tsigKeyName: str | None = None
    tsigAlgorithm: TsigAlgorithm = TsigAlgorithm.hmac_sha256
    tsigSecret: SecretRef | None = None
    ttl: int = Field(default=60, ge=1)
    propagationTimeout: Duration = Field(
        default=timedelta(minutes=2), description="bounded wait for the TXT record"
    )
    nameservers: list[str] = Field(
        default_factory=list, description="authoritative servers to check (default: the zone's NS)"
    )

    @model_validator(mode="after")
    def _tsig(self) -> Rfc2136:
        if (self.tsigKeyName is None) != (self.tsigSecret is None):
            raise ValueError("tsigKeyName and tsigSecret go together")
        return self


ProviderOption = Annotated[str | int | bool, WithJsonSchema({"type": ["string", "integer", "boolean"]})]
PROVIDER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_]*$"


class DnsRecordCheck(Model):
    """Where the records go and how their propagation is checked (shared by provider and script)."""

    zone: Domain | None = Field(
        default=None, description="the zone of the records (default: found by SOA lookup)"
    )
    propagationTimeout: Duration = Field(
        default=timedelta(minutes=2), description="bounded wait for the TXT record"
    )
    nameservers: list[str] = Field(
        default_factory=list, description="authoritative servers to check (default: the zone's NS)"
    )
    resolvers: list[str] = Field(
        default_factory=list,
        description="DNS servers asked for the zone (SOA) and _acme-challenge CNAMEs (default: the system's)",
    )


class DnsProvider(DnsRecordCheck):
    """A DNS provider's API, through dns-lexicon (``name`` is a lexicon provider: cloudflare, route53, ...)."""

    name: str = Field(pattern=PROVIDER_NAME_PATTERN, description="a dns-lexicon provider name")
    options: dict[str, ProviderOption] = Field(
        default_factory=dict, description="the provider's plain settings"
    )
    secrets: dict[str, SecretRef] = Field(default_factory=dict, description="the provider's credentials")
    ttl: int = Field(default=60, ge=1)


PLACEHOLDERS = ("{name}", "{value}", "{zone}")


def _argv(value: list[str]) -> list[str]:
    for part in value:
        for brace in re.findall(r"{[^}]*}", part):
            if brace not in PLACEHOLDERS:
                raise ValueError(
                    f"unknown placeholder {brace} in {part!r}; the placeholders are {', '.join(PLACEHOLDERS)}"
                )
    return value


Argv = Annotated[list[str], Field(min_length=1), AfterValidator(_argv)]


class DnsScript(DnsRecordCheck):
    """Commands that add and remove the TXT record, for DNS without an API certctl speaks."""

    create: Argv = Field(description="argv; {name}, {value}, {zone} are replaced")
    delete: Argv = Field(description="argv; {name}, {value}, {zone} are replaced")
    timeout: Duration = Field(default=timedelta(seconds=60), description="per command")


class Dns01(Model):
    rfc2136: Rfc2136 | None = None
    provider: DnsProvider | None = None
    script: DnsScript | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Dns01:
        if sum(x is not None for x in (self.rfc2136, self.provider, self.script)) != 1:
            raise ValueError("give exactly one of rfc2136, provider or script")
        return self


HTTP01 = "http-01"
DNS01 = "dns-01"


class Solver(Model):
    domains: list[Domain] | None = Field(
        default=None, description="selector: these names and every name below them"
    )
    http01: Http01 | None = None
    dns01: Dns01 | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Solver:
        if (self.http01 is None) == (self.dns01 is None):
            raise ValueError("give exactly one of http01 or dns01")
        return self

    @property
    def challenge_type(self) -> str:
        """The ACME challenge this solver answers: ``http-01`` or ``dns-01``."""
        return DNS01 if self.dns01 is not None else HTTP01

    def matches(self, name: str) -> bool:
        if self.domains is None:
            return True
        base = name[2:] if domains.is_wildcard(name) else name
        return any(base == d or base.endswith("." + d) or name == d for d in self.domains)


class Eab(Model):
    keyId: str
    hmacKey: SecretRef


PROFILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Acme(Model):
    directoryUrl: str = Field(pattern=r"^https?://")
    email: str | None = None
    agreeToS: bool = False
    caBundle: RelPath | None = None
    eab: Eab | None = None
    preferredChain: str | None = None
    solvers: list[Solver] = Field(min_length=1)
    timeout: Duration = Field(default=timedelta(seconds=30), description="per HTTP request to the CA")
    profile: str | None = Field(
        default=None,
        pattern=PROFILE_PATTERN,
        description="certificate profile to order (one the CA's directory lists in meta.profiles: classic, "
        "tlsserver, shortlived, ...)",
    )

    def solver_for(self, name: str) -> Solver | None:
        return next((s for s in self.solvers if s.matches(name)), None)


class IssuerSpec(Model):
    localCA: LocalCA | None = None
    acme: Acme | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> IssuerSpec:
        if (self.localCA is None) == (self.acme is None):
            raise ValueError("give exactly one of localCA or acme")
        return self


# --- Store, IisHost ---------------------------------------------------------------


class PemDirectory(Model):
    path: RelPath


class WindowsStoreName(StrEnum):
    My = "My"
    WebHosting = "WebHosting"


class WindowsStore(Model):
    host: str = Field(description="the IisHost whose machine holds the store")
    location: Literal["LocalMachine"] = "LocalMachine"
    name: WindowsStoreName = WindowsStoreName.WebHosting


class StoreSpec(Model):
    pemDirectory: PemDirectory | None = None
    windows: WindowsStore | None = None
    node: Node | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StoreSpec:
        if (self.pemDirectory is None) == (self.windows is None):
            raise ValueError("give exactly one of pemDirectory or windows")
        return self


class IisBackend(StrEnum):
    windows = "windows"
    emulated = "emulated"


class IisHostSpec(Model):
    backend: IisBackend
    root: RelPath | None = Field(default=None, description="emulated: the folder that stands for the machine")
    computerName: str | None = Field(
        default=None, description="not supported: certctl manages the machine it runs on"
    )
    node: Node | None = None

    @field_validator("computerName")
    @classmethod
    def _local_only(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                f"managing a remote machine (computerName: {value}) is not supported; "
                "run certctl on the IIS server itself and leave computerName out"
            )
        return value

    @model_validator(mode="after")
    def _root(self) -> IisHostSpec:
        if self.backend is IisBackend.emulated and self.root is None:
            raise ValueError("an emulated IIS host needs root (the folder that stands for the machine)")
        return self


# --- Certificate ----------------------------------------------------------------------


class KeyAlgorithm(StrEnum):
    ecdsa_p256 = "ecdsa-p256"
    ecdsa_p384 = "ecdsa-p384"
    rsa_2048 = "rsa-2048"
    rsa_3072 = "rsa-3072"
    rsa_4096 = "rsa-4096"


class Key(Model):
    algorithm: KeyAlgorithm = KeyAlgorithm.ecdsa_p256
    reuse: bool = False


class IisMode(StrEnum):
    auto = "auto"
    site = "site"
    none = "none"


class IisTarget(Model):
    host: str
    mode: IisMode = IisMode.auto
    site: str | None = None
    store: str | None = Field(
        default=None, description="windows Store to bind from (default: the first of stores on that host)"
    )
    ftp: bool = Field(
        default=True, description="also set FTP sites' ssl certificate where a host name matches"
    )

    @model_validator(mode="after")
    def _site(self) -> IisTarget:
        if self.mode is IisMode.site and not self.site:
            raise ValueError("mode: site needs site (the IIS site name)")
        if self.mode is not IisMode.site and self.site:
            raise ValueError("site is only used with mode: site")
        return self


Command = str | list[str]


def _key_mode(value: str) -> str:
    if int(value, 8) & 0o007:
        raise ValueError(
            f"keyMode {value} gives every user access to the private key; "
            "use owner and group bits only (0600, 0640)"
        )
    return value


class FilesTask(Model):
    path: RelPath = Field(description="folder that receives cert.pem, chain.pem, fullchain.pem, privkey.pem")
    reload: Command | None = Field(default=None, description="command run after the files changed")
    reloadTimeout: Duration = Field(
        default=timedelta(minutes=5), description="the reload command is killed after this"
    )
    keyMode: Annotated[str, AfterValidator(_key_mode)] = Field(
        default="0600", pattern=r"^0?[0-7]{3}$", description="no world bits: 0600 or 0640"
    )
    folderMode: str = Field(
        default="0700",
        pattern=r"^0?[0-7]{3}$",
        description="mode of the folder when certctl creates it (it holds the key)",
    )


class PfxTask(Model):
    path: RelPath = Field(description="the .pfx file to write")
    password: SecretRef
    encryption: Literal["aes256", "3des"] = Field(
        default="aes256",
        description="3des for consumers that cannot read AES-256 PKCS#12 (Windows before Server 2019)",
    )
    reload: Command | None = None
    reloadTimeout: Duration = Field(
        default=timedelta(minutes=5), description="the reload command is killed after this"
    )


class ScriptTask(Model):
    command: Command
    timeout: Duration = timedelta(minutes=5)


class CcsTask(Model):
    path: RelPath = Field(description="the Centralized Certificate Store share")
    password: SecretRef | None = None


class Task(Model):
    files: FilesTask | None = None
    pfx: PfxTask | None = None
    script: ScriptTask | None = None
    ccs: CcsTask | None = None
    node: Node | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Task:
        if sum(x is not None for x in (self.files, self.pfx, self.script, self.ccs)) != 1:
            raise ValueError("give exactly one of files, pfx, script or ccs")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("files", "pfx", "script", "ccs") if getattr(self, k) is not None)


class Verify(Model):
    endpoint: str = Field(pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):[0-9]{1,5}$", description="host:port")
    sni: Domain | None = None
    timeout: Duration = timedelta(seconds=10)

    @field_validator("endpoint")
    @classmethod
    def _port(cls, value: str) -> str:
        return _host_port(value, "endpoint", "www.example.com:443", check_host=False)


def _issuers(value: Any) -> Any:
    if isinstance(value, list):
        if not value:
            raise ValueError("give at least one Issuer")
        seen: set[str] = set()
        for name in value:
            if isinstance(name, str) and name in seen:
                raise ValueError(f"Issuer {name} is listed twice")
            seen.add(name)
    return value


IssuerRef = Annotated[
    str | list[str],
    AfterValidator(_issuers),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "minItems": 1,
                    "uniqueItems": True,
                },
            ],
            "description": "an Issuer's name, or an ordered list: the first is used, the next when a CA cannot serve",
        }
    ),
]


class CertificateSpec(Model):
    issuer: IssuerRef
    domains: list[Domain] = Field(min_length=1, max_length=100, description="the first is the subject CN")
    key: Key = Key()
    renewal: Renewal | None = None
    stores: list[str] = Field(default_factory=list)
    iis: list[IisTarget] = Field(default_factory=list)
    tasks: list[Task] = Field(default_factory=list)
    verify: list[Verify] = Field(default_factory=list)

    @property
    def issuers(self) -> tuple[str, ...]:
        """The Issuers in the order they are tried (one, or the list ``issuer`` gives)."""
        return (self.issuer,) if isinstance(self.issuer, str) else tuple(self.issuer)

    @field_validator("domains")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise ValueError(f"{name} is listed twice")
            seen.add(name)
        return value


KIND_SPECS: dict[str, type[Model]] = {
    "Settings": SettingsSpec,
    "Issuer": IssuerSpec,
    "Store": StoreSpec,
    "IisHost": IisHostSpec,
    "Certificate": CertificateSpec,
}


def document_model(kind: str) -> type[BaseModel]:
    """The whole-document model of a kind (used for validation and for the JSON Schema)."""
    return _DOCUMENTS[kind]


def _make_document(kind: str, spec: type[Model]) -> type[BaseModel]:
    from pydantic import create_model

    fields: dict[str, Any] = {
        "apiVersion": (Literal["certctl/v1"], ...),
        "kind": (Literal[kind], ...),
        "metadata": (Metadata, ...),
        "spec": (spec, spec() if kind == "Settings" else ...),
    }
    model: type[BaseModel] = create_model(
        kind, __config__=ConfigDict(extra="forbid", frozen=True, title=kind), **fields
    )
    return model


_DOCUMENTS: dict[str, type[BaseModel]] = {k: _make_document(k, v) for k, v in KIND_SPECS.items()}
