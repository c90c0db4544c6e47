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

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import structlog
from acme import errors as acme_errors
from acme import messages
from acme.client import ClientV2
from cryptography import x509
from josepy.errors import DeserializationError

from reconciler.adapters.issuers.acme import retry
from reconciler.adapters.issuers.acme.account import AccountStore, Registration
from reconciler.adapters.issuers.acme.ari import AriIndex, cert_id
from reconciler.adapters.issuers.acme.chains import make_csr
from reconciler.adapters.issuers.acme.challenges import ChallengeJournal
from reconciler.adapters.issuers.acme.order import Order
from reconciler.adapters.issuers.acme.retry import RetryPolicy
from reconciler.adapters.issuers.acme.transport import Connection, Network, Session, directory_entry, utc
from reconciler.core import spec as specs
from reconciler.ports import (
    DelegatingSolver,
    IssueError,
    IssueRequest,
    Material,
    RenewalWindow,
    Solver,
    SolverError,
    SolverFactory,
)
from reconciler.support import pki

log = structlog.get_logger()

DIRECTORY_TTL = 60.0  # seconds a fetched directory is reused
ARI_TIMEOUT = 10.0  # seconds per renewalInfo request: advice, asked before every plan, must not hold it up


class AcmeIssuer:
    """IssuerBackend and RenewalInfoSource for one ``Issuer`` with an ``acme`` spec."""

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
    ) -> None:
        self.name = name
        self.spec = spec
        self.directory_url = spec.directoryUrl
        self.environ = environ
        self.retry_policy = retry_policy or RetryPolicy()
        self.order_timeout = order_timeout
        self.folder = Path(state_dir) / "acme" / name
        self.accounts = AccountStore(self.folder)
        self.registration = Registration(name, spec, self.accounts, environ)
        self.ari = AriIndex(self.folder / "ari.jsonl")
        self._solvers: list[Solver] = [solvers(s, environ) for s in spec.solvers]
        # Every challenge made answerable is written here first and removed once cleaned up, so a crash
        # or kill -9 in the middle of an order never leaves a challenge file or DNS record behind.
        self.challenges = ChallengeJournal(self.folder / "challenges.jsonl", name, solvers, environ)
        self._verify: bool | str = spec.caBundle if spec.caBundle else True
        self._timeout = spec.timeout.total_seconds()
        self._lock = threading.Lock()  # guards the dicts below
        self._cert_locks: dict[str, threading.Lock] = {}
        self._directory: tuple[float, messages.Directory] | None = None
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
        return RenewalWindow(start=start, end=end, retry_after=retry.parse_retry_after(response.headers.get("Retry-After")))

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
                order = Order(session, self.spec.solvers, self._solvers, self._solver_index, self.challenges, self.ari,
                              self.order_timeout, self.spec.preferredChain, bound, self._delegate, pool=self._pool)
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
            raise IssueError(f"dns-01 for {domain} is delegated by CNAME to {record}, but {target} of Issuer {self.name}",
                             transient=False)
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
        return directory

    def _session(self) -> Session:
        context = f"Issuer {self.name}: the CA at {self.directory_url}"
        try:
            key = self.accounts.key()
            alg = self.accounts.alg()
        except (OSError, ValueError) as exc:
            raise IssueError(f"Issuer {self.name}: {exc}", transient=False) from None
        net = Network(self.retry_policy, key=key, alg=alg, verify=self._verify, timeout=self._timeout,
                      connection=self._connection)
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


def delegation_solver(spec: specs.Acme, record: str) -> int | str:
    """The index of the dns01 solver that writes a delegated ``record``, or why there is none."""
    chosen = spec.solver_for(record)
    if chosen is None:
        return "no solver matches that name: add a dns01 solver whose domains cover it"
    index = next(i for i, s in enumerate(spec.solvers) if s is chosen)
    if chosen.dns01 is None:
        return f"the solver that matches that name (solver {index}) is not a dns01 solver"
    return index


def normalize_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}".rstrip("/")


__all__ = ["AcmeIssuer", "normalize_url"]
