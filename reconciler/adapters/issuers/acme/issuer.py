"""The ACME issuer of one ``Issuer``: the IssuerBackend and RenewalInfoSource the executor and planner use.

One ``AcmeIssuer`` serves every certificate of one ``Issuer`` and is shared by the executor's
threads. Each order runs as one ``order.Order``; every order shares the issuer's kept-alive HTTP
connections and its pool of unused nonces (``transport.Connection``); the account is registered once
(``account.Registration``) and kept in ``<state_dir>/acme/<issuer>/``; two orders for one
certificate never run at once; every challenge is journaled (``challenges``).

Every request to the CA is retried on transient failures (``retry.RetryPolicy``); what cannot be
fixed by retrying becomes ``IssueError(transient=False)`` carrying the CA's problem document.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import requests
from acme import errors as acme_errors
from acme import jws as acme_jws
from acme import messages
from acme.client import ClientV2
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import DeserializationError
from josepy.jwk import JWKEC, JWKRSA

from reconciler.adapters.issuers.acme import retry
from reconciler.adapters.issuers.acme.account import AccountStore, Registration, jwa_for
from reconciler.adapters.issuers.acme.ari import AriIndex, cert_id
from reconciler.adapters.issuers.acme.chains import make_csr
from reconciler.adapters.issuers.acme.challenges import ChallengeJournal
from reconciler.adapters.issuers.acme.crl import CrlChecker
from reconciler.adapters.issuers.acme.order import Order
from reconciler.adapters.issuers.acme.retry import RetryPolicy
from reconciler.adapters.issuers.acme.transport import Connection, Network, Session, directory_entry, utc
from reconciler.core import spec as specs
from reconciler.core.challenge_rules import delegation_solver
from reconciler.core.planner import profile_problem
from reconciler.ports import (
    REVOCATION_REASONS,
    Blobs,
    DelegatingSolver,
    IssueError,
    IssueRequest,
    Material,
    RecordLog,
    RenewalWindow,
    RevocationStatus,
    RevokeError,
    Solver,
    SolverError,
    SolverFactory,
)
from reconciler.support import pki
from reconciler.support.fs import atomic_write, read_regular
from reconciler.support.logging import get_logger

log = get_logger()

DIRECTORY_TTL = 60.0  # seconds a fetched directory is reused
ARI_TIMEOUT = 10.0  # seconds per renewalInfo request: advice, asked before every plan, must not hold it up


class AcmeIssuer:
    """IssuerBackend and RenewalInfoSource for one ``Issuer`` with an ``acme`` spec."""

    runs_locally = False  # every order waits on the CA

    def __init__(
        self,
        name: str,
        spec: specs.Acme,
        state_dir: Path,
        *,
        solvers: SolverFactory,
        environ: Mapping[str, str] | None = None,
        retry_policy: RetryPolicy | None = None,
        order_timeout: float = 300.0,
        blobs: Blobs | None = None,
        challenge_log: RecordLog | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.directory_url = spec.directoryUrl
        self.environ = environ
        self.retry_policy = retry_policy or RetryPolicy()
        self.order_timeout = order_timeout
        self.folder = Path(state_dir) / "acme" / name
        self.accounts = AccountStore(self.folder, blobs)
        self.registration = Registration(name, spec, self.accounts, environ)
        self.ari = AriIndex(self.folder / "ari.jsonl")
        self._solvers: list[Solver] = [solvers(s, environ) for s in spec.solvers]
        # Every challenge made answerable is written here first and removed once cleaned up, so a crash
        # or kill -9 in the middle of an order never leaves a challenge file or DNS record behind.
        self.challenges = ChallengeJournal(
            self.folder / "challenges.jsonl", name, solvers, environ, challenge_log
        )
        self._verify: bool | str = spec.caBundle if spec.caBundle else True
        self._timeout = spec.timeout.total_seconds()
        self._lock = threading.Lock()  # guards the dicts below
        self._cert_locks: dict[str, threading.Lock] = {}
        self._directory: tuple[float, messages.Directory] | None = None
        self._crl_checker = CrlChecker(self._verify, self._timeout)
        self._profiles_written: list[str] | None = None
        # Kept-alive HTTP connections and unused nonces, shared by every order of this issuer.
        self._connection = Connection()
        # Threads for the requests of one order made at once (its authorizations), started once.
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix=f"certctl-acme-{name}")

    # --- IssuerBackend -------------------------------------------------------------------------

    def identity(self) -> str:
        return "acme:" + normalize_url(self.directory_url)

    def issue(self, request: IssueRequest) -> Material:
        with self._lock:
            lock = self._cert_locks.setdefault(request.certificate, threading.Lock())
        if not lock.acquire(blocking=False):
            raise IssueError(
                f"an ACME order for certificate {request.certificate} is already running; not starting a second one",
                transient=True,
                outage=False,
            )
        try:
            return self._issue(request)
        finally:
            lock.release()

    def recover_challenges(self) -> int:
        """Clean up the challenges a crashed process left answerable; returns how many were removed."""
        return self.challenges.recover()

    # --- RenewalInfoSource ---------------------------------------------------------------------

    def renewal_window(self, cert_pem: bytes) -> RenewalWindow | None:
        """The CA's suggested renewal window (RFC 9773); None when it offers no renewalInfo or does not answer."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            ident = cert_id(cert)
        except ValueError as exc:
            log.warning("acme.ari.unusable_certificate", issuer=self.name, error=str(exc))
            return None
        quick = RetryPolicy(attempts=3, budget=5.0, initial=0.2, maximum=1.0)
        net = Network(quick, verify=self._verify, timeout=min(self._timeout, ARI_TIMEOUT))
        try:
            directory = self._get_directory(net)
            base = directory_entry(directory, "renewalInfo")
            if base is None:
                return None
            response = net.get(f"{base.rstrip('/')}/{ident}")
            info = messages.RenewalInfo.from_json(response.json())
        except (acme_errors.Error, requests.RequestException, DeserializationError, ValueError) as exc:
            log.warning("acme.ari.failed", issuer=self.name, certificate_id=ident, error=retry.describe(exc))
            return None
        finally:
            net.close()
        self.ari.remember(cert)
        window = info.suggested_window
        start, end = utc(window.start), utc(window.end)
        if start is None or end is None or end < start:
            log.warning("acme.ari.bad_window", issuer=self.name, certificate_id=ident)
            return None
        return RenewalWindow(
            start=start, end=end, retry_after=retry.parse_retry_after(response.headers.get("Retry-After"))
        )

    # --- account ----------------------------------------------------------------------------------------

    def rollover_key(self) -> str:
        """Replace the account key (RFC 8555 §7.3.5): a new key is staged in the state dir, the CA is asked to
        switch (an inner JWS signed by the new key inside one signed by the old), then the new key becomes the
        account key. Returns the account URL. A rollover interrupted earlier is settled first."""
        self._settle_staged_key()
        session = self._session()
        try:
            url = directory_entry(session.directory, "keyChange")
            account = session.net.account
            if url is None or account is None:
                raise IssueError(
                    f"Issuer {self.name}: the CA at {self.directory_url} offers no keyChange", transient=False
                )
            new = self.accounts.stage_key()
            payload = json.dumps(
                {"account": account.uri, "oldKey": session.key.public_key().to_partial_json()}
            )
            inner = acme_jws.JWS.sign(payload.encode(), key=new, alg=jwa_for(new), nonce=None, url=url)
            try:
                session.post(url, inner)
            except messages.Error as exc:
                self.accounts.discard_staged()
                raise retry.to_issue_error(
                    exc, f"Issuer {self.name}: key change at {self.directory_url}"
                ) from None
            self.accounts.promote_staged()
            log.info("acme.account.key_rolled_over", issuer=self.name, account=account.uri)
            return str(account.uri)
        except (acme_errors.Error, requests.RequestException, DeserializationError) as exc:
            raise retry.to_issue_error(
                exc, f"Issuer {self.name}: key change at {self.directory_url}"
            ) from None
        finally:
            session.net.session.close()

    def sync_account(self) -> bool:
        """Update the saved account's contact when the spec's email changed (True when it was updated)."""
        record = self.accounts.load(self.spec.directoryUrl)
        if record is None or record.email == self.spec.email:
            return False
        self._session().net.session.close()  # the registration updates the contact on the way
        return True

    def _settle_staged_key(self) -> None:
        """After a rollover was interrupted (``account.key.new`` left behind): ask the CA whether it knows an
        account by the staged key (newAccount, onlyReturnExisting); make it the key if so, else drop it."""
        staged = self.accounts.staged()
        if staged is None:
            return
        net = Network(
            self.retry_policy, key=staged, alg=jwa_for(staged), verify=self._verify, timeout=self._timeout
        )
        try:
            client = ClientV2(self._get_directory(net), net)
            client.new_account(messages.NewRegistration(only_return_existing=True))
        except acme_errors.ConflictError:
            self.accounts.promote_staged()  # the CA answered with the account: it switched before the interruption
            log.warning("acme.account.staged_key_promoted", issuer=self.name)
            return
        except messages.Error as exc:
            if retry.problem_code(exc) != "accountDoesNotExist":
                raise retry.to_issue_error(
                    exc, f"Issuer {self.name}: checking a staged account key"
                ) from None
        except (acme_errors.Error, requests.RequestException, DeserializationError) as exc:
            raise retry.to_issue_error(exc, f"Issuer {self.name}: checking a staged account key") from None
        finally:
            net.session.close()
        self.accounts.discard_staged()
        log.warning("acme.account.staged_key_dropped", issuer=self.name, note="the CA never switched to it")

    # --- Revoker ---------------------------------------------------------------------------------------

    def revoke(self, material: Material, reason: str) -> None:
        """revokeCert (RFC 8555 §7.6) signed with the account key; when the CA says this account may not
        (the account was registered anew since), signed with the certificate's own key instead."""
        cert = x509.load_pem_x509_certificate(material.cert_pem)
        code = REVOCATION_REASONS.get(reason)
        if code is None:
            raise RevokeError(
                f"unknown revocation reason {reason!r} (known: {', '.join(REVOCATION_REASONS)})"
            )
        context = f"Issuer {self.name}: revoking {material.info.thumbprint[:8]} at {self.directory_url}"
        try:
            session = self._session()
        except IssueError as exc:
            raise RevokeError(str(exc)) from None
        try:
            session.client.revoke(cert, code)
        except messages.Error as exc:
            if retry.problem_code(exc) == "alreadyRevoked":
                log.info("acme.revoke.already_revoked", issuer=self.name, thumbprint=material.info.thumbprint)
                return
            if retry.problem_code(exc) != "unauthorized":
                raise RevokeError(f"{context}: {retry.describe(exc)}") from None
            log.info("acme.revoke.with_certificate_key", issuer=self.name, reason=retry.describe(exc))
            self._revoke_with_certificate_key(material, cert, code, context)
        except (acme_errors.Error, requests.RequestException, DeserializationError) as exc:
            raise RevokeError(f"{context}: {retry.describe(exc)}") from None
        finally:
            session.net.session.close()
        log.info(
            "acme.certificate.revoked", issuer=self.name, thumbprint=material.info.thumbprint, reason=reason
        )

    def _revoke_with_certificate_key(
        self, material: Material, cert: x509.Certificate, code: int, context: str
    ) -> None:
        key = pki.load_key(material.key_pem)
        jwk = JWKEC(key=key) if isinstance(key, ec.EllipticCurvePrivateKey) else JWKRSA(key=key)
        alg = jwa_for(jwk)
        net = Network(self.retry_policy, key=jwk, alg=alg, verify=self._verify, timeout=self._timeout)
        try:
            ClientV2(self._get_directory(net), net).revoke(cert, code)
        except messages.Error as exc:
            if retry.problem_code(exc) != "alreadyRevoked":
                raise RevokeError(
                    f"{context} (signed with the certificate's key): {retry.describe(exc)}"
                ) from None
        except (acme_errors.Error, requests.RequestException, DeserializationError) as exc:
            raise RevokeError(f"{context}: {retry.describe(exc)}") from None
        finally:
            net.session.close()

    def revocation_status(self, material: Material) -> RevocationStatus | None:
        """The certificate's entry in the CRL its distribution points name (``crl.CrlChecker``), or None."""
        return self._crl_checker.status(material)

    # --- one issuance ----------------------------------------------------------------------------

    def _issue(self, request: IssueRequest) -> Material:
        bound = log.bind(issuer=self.name, certificate=request.certificate)
        plan = self._solver_plan(request)
        key = self._key(request)
        csr = make_csr(key, request.domains)
        context = f"ACME order for {request.certificate} at {self.directory_url}"
        for attempt in (1, 2):
            session = self._session()
            try:
                self._check_profile(session.directory)
                order = Order(
                    session,
                    self.spec.solvers,
                    self._solvers,
                    self._solver_index,
                    self.challenges,
                    self.ari,
                    self.order_timeout,
                    self.spec.preferredChain,
                    bound,
                    self._delegate,
                    self.spec.profile,
                    pool=self._pool,
                )
                return order.run(request, plan, key, csr)
            except IssueError:
                raise
            except SolverError as exc:
                raise IssueError(f"{context}: {exc}", transient=False) from None
            except messages.Error as exc:
                if retry.problem_code(exc) == "accountDoesNotExist" and attempt == 1:
                    bound.warning("acme.account.unknown_to_ca", detail=exc.detail)
                    self.registration.forget()
                    continue
                raise retry.to_issue_error(exc, context) from None
            except (acme_errors.Error, requests.RequestException, DeserializationError) as exc:
                raise retry.to_issue_error(exc, context) from None
            finally:
                session.net.close()
        raise AssertionError("unreachable")

    # --- solvers, keys ---------------------------------------------------------------------------

    def _solver_index(self, domain: str) -> int:
        chosen = self.spec.solver_for(domain)
        if chosen is None:
            raise IssueError(
                f"no solver of Issuer {self.name} matches {domain}; add one without domains, or one whose domains cover it",
                transient=False,
            )
        index = next(i for i, s in enumerate(self.spec.solvers) if s is chosen)
        if domain.startswith("*.") and chosen.challenge_type != specs.DNS01:
            raise IssueError(
                f"Wildcard certificates require DNS validation: {domain} is matched by an http01 solver of Issuer {self.name}",
                transient=False,
            )
        return index

    def _delegate(self, domain: str, index: int) -> tuple[int, str]:
        """Challenge delegation: when ``_acme-challenge.<domain>`` is a CNAME, the record goes where the
        chain ends, written by the solver whose selector matches that name."""
        solver = self._solvers[index]
        if not isinstance(solver, DelegatingSolver):
            return index, ""
        try:
            record = solver.delegation_chain(domain)[-1]
        except SolverError as exc:
            raise IssueError(f"dns-01 for {domain}: {exc}", transient=False) from None
        if record == f"_acme-challenge.{domain}":
            return index, ""
        target = delegation_solver(self.spec, record)
        if isinstance(target, str):
            raise IssueError(
                f"dns-01 for {domain} is delegated by CNAME to {record}, but {target} of Issuer {self.name}",
                transient=False,
            )
        log.info("acme.challenge.delegated", issuer=self.name, domain=domain, record=record, solver=target)
        return target, record

    def _solver_plan(self, request: IssueRequest) -> dict[str, int]:
        if not request.domains:
            raise IssueError("a certificate needs at least one domain", transient=False)
        return {domain: self._solver_index(domain) for domain in request.domains}

    def _key(self, request: IssueRequest) -> pki.PrivateKey:
        try:
            if request.key_pem is not None:
                return pki.load_key(request.key_pem)
            return pki.generate_key(request.key_algorithm)
        except (ValueError, TypeError) as exc:
            raise IssueError(f"cannot use the certificate key: {exc}", transient=False) from None

    # --- directory and session ---------------------------------------------------------------------

    def _get_directory(self, net: Network) -> messages.Directory:
        with self._lock:
            cached = self._directory
        if cached is not None and time.monotonic() - cached[0] < DIRECTORY_TTL:
            return cached[1]
        directory = messages.Directory.from_json(net.get(self.directory_url).json())
        with self._lock:
            self._directory = (time.monotonic(), directory)
        self._remember_profiles(directory)
        return directory

    # --- profiles --------------------------------------------------------------------------------------

    def _remember_profiles(self, directory: messages.Directory) -> None:
        """Keep the profiles the directory lists in ``directory.json`` (validation reads them offline)."""
        offered = sorted(offered_profiles(directory))
        if self._profiles_written == offered:
            return
        record = {
            "directoryUrl": self.directory_url,
            "profiles": offered,
            "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.folder / DIRECTORY_RECORD, json.dumps(record, indent=1) + "\n", 0o600)
        except OSError as exc:
            log.warning("acme.directory.not_recorded", issuer=self.name, error=str(exc))
            return
        self._profiles_written = offered

    def _check_profile(self, directory: messages.Directory) -> None:
        problem = profile_problem(self.name, self.spec.profile, tuple(sorted(offered_profiles(directory))))
        if problem is not None:
            raise IssueError(problem, transient=False, outage=False)

    def refresh_directory(self) -> tuple[str, ...] | None:
        """Fetch the directory (quickly; never raises): the profiles it lists, or None when it cannot be read."""
        quick = RetryPolicy(attempts=2, budget=5.0, initial=0.2, maximum=1.0)
        net = Network(quick, verify=self._verify, timeout=min(self._timeout, ARI_TIMEOUT))
        try:
            return tuple(sorted(offered_profiles(self._get_directory(net))))
        except (acme_errors.Error, requests.RequestException, DeserializationError, ValueError) as exc:
            log.warning("acme.directory.unreachable", issuer=self.name, error=retry.describe(exc))
            return None
        finally:
            net.session.close()

    def _session(self) -> Session:
        context = f"Issuer {self.name}: the CA at {self.directory_url}"
        if (
            self.accounts.staged() is not None
        ):  # a key rollover was interrupted: settle it before using the key
            self._settle_staged_key()
        try:
            key = self.accounts.key()
            alg = self.accounts.alg()
        except (OSError, ValueError) as exc:
            raise IssueError(f"Issuer {self.name}: {exc}", transient=False) from None
        net = Network(
            self.retry_policy,
            key=key,
            alg=alg,
            verify=self._verify,
            timeout=self._timeout,
            connection=self._connection,
        )
        try:
            directory = self._get_directory(net)
            client = ClientV2(directory, net)
            self.registration.ensure(client, directory, key)
        except IssueError:
            net.close()
            raise
        except (acme_errors.Error, requests.RequestException, DeserializationError) as exc:
            net.close()
            raise retry.to_issue_error(exc, context) from None
        return Session(net, client, directory, key)


DIRECTORY_RECORD = "directory.json"


def offered_profiles(directory: messages.Directory) -> dict[str, str]:
    """The profiles a directory lists in ``meta.profiles`` (empty when it lists none)."""
    profiles = getattr(directory.meta, "profiles", None)  # a josepy frozendict
    return {str(k): str(v) for k, v in profiles.items()} if isinstance(profiles, Mapping) else {}


def cached_profiles(state_dir: Path, issuer: str, directory_url: str) -> tuple[str, ...] | None:
    """The profiles recorded the last time this Issuer's directory was fetched; None when it never was (for
    this directory URL) or the record cannot be read."""
    path = Path(state_dir) / "acme" / issuer / DIRECTORY_RECORD
    try:
        data = json.loads(read_regular(path, 1 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("directoryUrl") != directory_url:
        return None
    profiles = data.get("profiles")
    if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
        return None
    return tuple(profiles)


def normalize_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}".rstrip("/")


__all__ = ["AcmeIssuer", "normalize_url"]
