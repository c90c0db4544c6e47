"""The ACME issuer: accounts, orders, challenges, finalization, chains and renewal information.

One ``AcmeIssuer`` serves every certificate of one ``Issuer`` and is shared by the executor's
threads. Each order gets its own HTTP session and nonce pool; the account is registered once (under
a lock) and kept in ``<state_dir>/acme/<issuer>/``; two orders for one certificate never run at once.

Every request to the CA is retried on transient failures (``retry.RetryPolicy``); what cannot be
fixed by retrying becomes ``IssueError(transient=False)`` carrying the CA's problem document.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import structlog
from acme import challenges, messages
from acme import errors as acme_errors
from acme.client import ClientNetwork, ClientV2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from josepy.b64 import b64decode
from josepy.errors import DeserializationError
from josepy.json_util import field
from josepy.jwa import ES256, JWASignature
from josepy.jwk import JWK
from requests.utils import parse_header_links

from reconciler.adapters.issuers.acme import retry
from reconciler.adapters.issuers.acme.account import AccountStore
from reconciler.adapters.issuers.acme.ari import AriIndex, cert_id
from reconciler.adapters.issuers.acme.retry import RetryPolicy
from reconciler.core import spec as specs
from reconciler.ports import (
    ChallengeTask,
    IssueError,
    IssueRequest,
    Material,
    RenewalWindow,
    Solver,
    SolverError,
    SolverFactory,
)
from reconciler.state.statedir import KeyedLog
from reconciler.support import pki
from reconciler.support.secrets import SecretError, resolve

log = structlog.get_logger()

USER_AGENT = "certctl/0.1 (acme-python)"
DIRECTORY_TTL = 60.0  # seconds a fetched directory is reused
ARI_TIMEOUT = 10.0  # seconds per renewalInfo request: advice, asked before every plan, must not hold it up


class NewOrder(messages.NewOrder):
    """newOrder with RFC 9773 ``replaces`` (the ARI identifier of the certificate being renewed)."""

    replaces: str | None = field("replaces", omitempty=True)


class _Network(ClientNetwork):
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
class _Session:
    net: _Network
    client: ClientV2
    directory: messages.Directory
    key: JWK

    def post(self, url: str, obj: Any) -> requests.Response:
        return self.net.post(url, obj, new_nonce_url=self.directory["newNonce"])

    def get_as_post(self, url: str) -> requests.Response:
        return self.net.post(url, None, new_nonce_url=self.directory["newNonce"])


@dataclass(frozen=True)
class _Pending:
    url: str
    domain: str  # as requested: '*.example.com' for a wildcard
    challenge: messages.ChallengeBody
    response: challenges.ChallengeResponse
    task: ChallengeTask
    solver: int  # index into the issuer's solvers


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
        self.ari = AriIndex(self.folder / "ari.jsonl")
        self._build_solver = solvers
        self._solvers: list[Solver] = [solvers(s, environ) for s in spec.solvers]
        # Every challenge made answerable is written here first and removed once cleaned up, so a crash
        # or kill -9 in the middle of an order never leaves a challenge file or DNS record behind.
        self.challenges = KeyedLog(self.folder / "challenges.jsonl")
        self._verify: bool | str = spec.caBundle if spec.caBundle else True
        self._timeout = spec.timeout.total_seconds()
        self._lock = threading.Lock()  # guards the dicts below
        self._account_lock = threading.Lock()  # one registration at a time
        self._cert_locks: dict[str, threading.Lock] = {}
        self._directory: tuple[float, messages.Directory] | None = None

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
        net = _Network(quick, verify=self._verify, timeout=min(self._timeout, ARI_TIMEOUT))
        try:
            directory = self._get_directory(net)
            base = _directory_entry(directory, "renewalInfo")
            if base is None:
                return None
            response = net.get(f"{base.rstrip('/')}/{ident}")
            info = messages.RenewalInfo.from_json(response.json())
        except (acme_errors.Error, requests.RequestException, DeserializationError, ValueError) as exc:
            log.warning("acme.ari.failed", issuer=self.name, certificate_id=ident, error=retry.describe(exc))
            return None
        finally:
            net.session.close()
        self.ari.remember(cert)
        window = info.suggested_window
        start, end = _utc(window.start), _utc(window.end)
        if start is None or end is None or end < start:
            log.warning("acme.ari.bad_window", issuer=self.name, certificate_id=ident)
            return None
        return RenewalWindow(start=start, end=end, retry_after=retry.parse_retry_after(response.headers.get("Retry-After")))

    # --- the order -----------------------------------------------------------------------------

    def _issue(self, request: IssueRequest) -> Material:
        bound = log.bind(issuer=self.name, certificate=request.certificate)
        plan = self._solver_plan(request)
        key = self._key(request)
        csr = make_csr(key, request.domains)
        context = f"ACME order for {request.certificate} at {self.directory_url}"
        for attempt in (1, 2):
            session = self._session()
            try:
                return self._order(session, request, plan, key, csr, bound)
            except IssueError:
                raise
            except SolverError as exc:
                raise IssueError(f"{context}: {exc}", transient=False) from None
            except messages.Error as exc:
                if retry.problem_code(exc) == "accountDoesNotExist" and attempt == 1:
                    bound.warning("acme.account.unknown_to_ca", detail=exc.detail)
                    self._forget_account()
                    continue
                raise retry.to_issue_error(exc, context) from None
            except (acme_errors.Error, requests.RequestException, DeserializationError) as exc:
                raise retry.to_issue_error(exc, context) from None
            finally:
                session.net.session.close()
        raise AssertionError("unreachable")

    def _order(self, session: _Session, request: IssueRequest, plan: dict[str, int], key: pki.PrivateKey,
               csr: x509.CertificateSigningRequest, bound: Any) -> Material:
        started = time.monotonic()
        deadline = started + self.order_timeout
        order_url, order = self._new_order(session, request, bound)
        bound = bound.bind(order=order_url)
        bound.info("acme.order.created", domains=list(request.domains), status=_status(order.status))

        pending = self._pending_challenges(session, order, plan)
        if pending:
            self._solve(session, pending, deadline, bound)

        order = self._wait_order(session, order_url, {"ready", "valid"}, deadline)
        if order.status == messages.STATUS_READY:
            order = self._finalize(session, order, order_url, csr, deadline, bound)
        if not order.certificate:
            raise IssueError(f"the CA marked order {order_url} valid without a certificate URL", transient=True)

        chains = self._download(session, order.certificate)
        chosen = choose_chain(chains, self.spec.preferredChain)
        if self.spec.preferredChain and chosen is not chains[0]:
            bound.info("acme.chain.alternate_chosen", preferred=self.spec.preferredChain)
        elif self.spec.preferredChain and chosen_top_issuer(chosen) != self.spec.preferredChain:
            bound.warning("acme.chain.preferred_unavailable", preferred=self.spec.preferredChain,
                          offered=[chosen_top_issuer(c) for c in chains])
        material = _material(chosen, key)
        leaf = x509.load_pem_x509_certificate(material.cert_pem)
        self.ari.remember(leaf)
        for pem in pki.split_pem_chain(material.chain_pem):
            self.ari.remember(x509.load_pem_x509_certificate(pem))
        bound.info(
            "acme.certificate.issued",
            thumbprint=material.info.thumbprint,
            not_after=material.info.not_after.isoformat(),
            seconds=round(time.monotonic() - started, 2),
        )
        return material

    def _new_order(self, session: _Session, request: IssueRequest, bound: Any) -> tuple[str, messages.Order]:
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=d) for d in request.domains]
        replaces = self._replaces(session, request, bound)
        try:
            response = session.post(session.directory["newOrder"], NewOrder(identifiers=identifiers, replaces=replaces))
        except messages.Error as exc:
            if replaces is None or retry.problem_code(exc) not in ("alreadyReplaced", "malformed"):
                raise
            # The CA will not accept this certificate as the one replaced (already renewed, or unknown
            # to it): a renewal without ARI is still a renewal.
            bound.warning("acme.order.replaces_refused", replaces=replaces, detail=exc.detail)
            response = session.post(session.directory["newOrder"], NewOrder(identifiers=identifiers))
        url = response.headers.get("Location")
        if not url:
            raise IssueError("the CA created an order without a Location", transient=True)
        return url, messages.Order.from_json(response.json())

    def _replaces(self, session: _Session, request: IssueRequest, bound: Any) -> str | None:
        if request.replaces is None and request.replaces_pem is None:
            return None
        if _directory_entry(session.directory, "renewalInfo") is None:
            return None
        if request.replaces_pem is not None:
            try:
                return cert_id(request.replaces_pem)  # from the certificate itself: its AKI and serial
            except ValueError as exc:
                bound.warning("acme.order.replaces_unusable", error=str(exc))
        if request.replaces is None:
            return None
        ident = self.ari.lookup(request.replaces)
        if ident is None:
            bound.warning("acme.order.replaces_unknown", serial=request.replaces.serial,
                          reason="the issuer of the replaced certificate is not known to this account's records")
        return ident

    def _pending_challenges(self, session: _Session, order: messages.Order, plan: dict[str, int]) -> list[_Pending]:
        out: list[_Pending] = []
        for url in order.authorizations:
            authz = messages.Authorization.from_json(session.get_as_post(url).json())
            ident = authz.identifier.value
            domain = f"*.{ident}" if authz.wildcard else ident
            if authz.status == messages.STATUS_VALID:
                log.debug("acme.authz.reused", issuer=self.name, domain=domain)
                continue
            if authz.status != messages.STATUS_PENDING:
                raise IssueError(f"the authorization for {domain} is {_status(authz.status)} at the CA", transient=False)
            index = plan.get(domain)
            if index is None:
                index = self._solver_index(domain)
            kind = self.spec.solvers[index].challenge_type
            challb = next((c for c in authz.challenges if c.chall.typ == kind), None)
            if challb is None:
                offered = ", ".join(sorted(str(c.chall.typ) for c in authz.challenges)) or "none"
                raise IssueError(
                    f"the CA offers no {kind} challenge for {domain} (it offers: {offered}); choose another solver for it",
                    transient=False,
                )
            response, validation = challb.chall.response_and_validation(session.key)
            task = ChallengeTask(
                domain=ident,
                kind=kind,
                token=challb.chall.encode("token"),
                key_authorization=response.key_authorization,
                txt_value=validation if kind == specs.DNS01 else "",
            )
            out.append(_Pending(url, domain, challb, response, task, index))
        return out

    def _solve(self, session: _Session, pending: list[_Pending], deadline: float, bound: Any) -> None:
        groups: dict[int, list[ChallengeTask]] = {}
        for item in pending:
            groups.setdefault(item.solver, []).append(item.task)
        prepared: list[tuple[Solver, list[ChallengeTask]]] = []
        try:
            for index, tasks in groups.items():
                solver = self._solvers[index]
                prepared.append((solver, tasks))
                self._remember(index, tasks)
                bound.info("acme.challenge.preparing", solver=repr(solver), domains=[t.domain for t in tasks])
                solver.prepare(tasks)
            for item in pending:
                session.client.answer_challenge(item.challenge, item.response)
                bound.info("acme.challenge.answered", domain=item.domain, kind=item.task.kind)
            self._wait_authorizations(session, pending, deadline)
        finally:
            for solver, tasks in reversed(prepared):
                try:
                    solver.cleanup(tasks)
                except Exception as exc:  # noqa: BLE001 - cleanup must not hide the order's own outcome
                    bound.error("acme.challenge.cleanup_failed", solver=repr(solver), error=str(exc),
                                note="kept in challenges.jsonl; the next apply or daemon pass cleans it up")
                else:
                    for task in tasks:
                        self.challenges.delete(_challenge_key(task))

    def _remember(self, index: int, tasks: list[ChallengeTask]) -> None:
        solver = self.spec.solvers[index].model_dump(mode="json", by_alias=True, exclude_none=True)
        for task in tasks:
            self.challenges.set(_challenge_key(task), {"solver": solver, "task": asdict(task)})

    def recover_challenges(self) -> int:
        """Clean up the challenges a crashed process left answerable; returns how many were removed."""
        removed = 0
        for key, record in sorted(self.challenges.read().items()):
            task = ChallengeTask(**record["task"])
            try:
                solver = self._build_solver(specs.Solver.model_validate(record["solver"]), self.environ)
                solver.cleanup([task])
            except Exception as exc:  # noqa: BLE001 - reported and kept: the next pass tries again
                log.warning("acme.challenge.recovery_failed", issuer=self.name, domain=task.domain, kind=task.kind,
                            error=str(exc))
                continue
            self.challenges.delete(key)
            removed += 1
            log.warning("acme.challenge.recovered", issuer=self.name, domain=task.domain, kind=task.kind,
                        note="left by an interrupted order; removed")
        return removed

    def _wait_authorizations(self, session: _Session, pending: list[_Pending], deadline: float) -> None:
        waiting = {item.url: item for item in pending}
        done: dict[str, messages.Authorization] = {}
        interval = 0.1
        while waiting:
            for url in list(waiting):
                authz = messages.Authorization.from_json(session.get_as_post(url).json())
                if authz.status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                    done[url] = authz
                    del waiting[url]
            if not waiting:
                break
            if time.monotonic() + interval > deadline:
                names = ", ".join(item.domain for item in waiting.values())
                raise IssueError(f"the CA did not finish validating {names} within {self.order_timeout:g}s", transient=True)
            time.sleep(interval)
            interval = min(interval * 1.5, 2.0)
        failures: list[str] = []
        problem: dict[str, object] = {}
        subproblems: list[dict[str, object]] = []
        for url, authz in done.items():
            if authz.status == messages.STATUS_VALID:
                continue
            item = next(p for p in pending if p.url == url)
            error = next((c.error for c in authz.challenges if c.error is not None), None)
            if error is not None:
                doc = retry.problem_of(error)
                doc.setdefault("identifier", {"type": "dns", "value": item.task.domain})
                subproblems.append(doc)
                problem = problem or doc
                failures.append(f"{item.domain}: {retry.describe(error)}")
            else:
                failures.append(f"{item.domain}: authorization {_status(authz.status)}")
        if failures:
            if len(subproblems) > 1:
                problem = {**problem, "subproblems": subproblems}
            raise IssueError("validation failed: " + "; ".join(failures), transient=False, problem=problem)

    def _finalize(self, session: _Session, order: messages.Order, url: str, csr: Any, deadline: float,
                  bound: Any) -> messages.Order:
        """Finalize once. When the answer is lost (a timeout or 5xx retried into orderNotReady), the CA may
        well have accepted it: ask the order instead of failing, so that certificate is never ordered twice."""
        try:
            response = session.post(order.finalize, messages.CertificateRequest(csr=csr))
            order = messages.Order.from_json(response.json())
        except Exception as exc:
            current = messages.Order.from_json(session.get_as_post(url).json())
            if current.status in (messages.STATUS_READY, messages.STATUS_INVALID):
                raise  # the CA did not take it (or refused the order): the error stands
            bound.warning("acme.order.finalize_uncertain", error=str(exc) or repr(exc), status=_status(current.status),
                          note="the CA accepted an earlier finalize; waiting for that certificate")
            order = current
        bound.info("acme.order.finalizing")
        if order.status != messages.STATUS_VALID:
            order = self._wait_order(session, url, {"valid"}, deadline)
        return order

    def _wait_order(self, session: _Session, url: str, wanted: set[str], deadline: float) -> messages.Order:
        interval = 0.1
        while True:
            response = session.get_as_post(url)
            order: messages.Order = messages.Order.from_json(response.json())
            status = _status(order.status)
            if status in wanted:
                return order
            if order.status == messages.STATUS_INVALID:
                if order.error is not None:
                    raise retry.to_issue_error(order.error, "the CA refused the order")
                raise IssueError("the CA marked the order invalid without saying why", transient=False)
            pause = interval
            if order.status == messages.STATUS_PROCESSING:
                after = retry.parse_retry_after(response.headers.get("Retry-After"))
                if after is not None:
                    pause = max(0.05, min((after - datetime.now(UTC)).total_seconds(), 10.0))
            if time.monotonic() + pause > deadline:
                raise IssueError(f"the order {url} is still {status} after {self.order_timeout:g}s", transient=True)
            time.sleep(pause)
            interval = min(interval * 1.5, 2.0)

    def _download(self, session: _Session, url: str) -> list[str]:
        response = session.get_as_post(url)
        chains = [response.text]
        if self.spec.preferredChain:
            for link in _links(response, "alternate"):
                chains.append(session.get_as_post(link).text)
        return chains

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

    # --- directory and account -----------------------------------------------------------------------

    def _get_directory(self, net: _Network) -> messages.Directory:
        with self._lock:
            cached = self._directory
        if cached is not None and time.monotonic() - cached[0] < DIRECTORY_TTL:
            return cached[1]
        directory = messages.Directory.from_json(net.get(self.directory_url).json())
        with self._lock:
            self._directory = (time.monotonic(), directory)
        return directory

    def _session(self) -> _Session:
        context = f"Issuer {self.name}: the CA at {self.directory_url}"
        try:
            key = self.accounts.key()
            alg = self.accounts.alg()
        except (OSError, ValueError) as exc:
            raise IssueError(f"Issuer {self.name}: {exc}", transient=False) from None
        net = _Network(self.retry_policy, key=key, alg=alg, verify=self._verify, timeout=self._timeout)
        try:
            directory = self._get_directory(net)
            client = ClientV2(directory, net)
            self._ensure_account(client, directory, key)
        except IssueError:
            net.session.close()
            raise
        except (acme_errors.Error, requests.RequestException, DeserializationError) as exc:
            net.session.close()
            raise retry.to_issue_error(exc, context) from None
        return _Session(net, client, directory, key)

    def _forget_account(self) -> None:
        with self._account_lock, contextlib.suppress(FileNotFoundError):
            self.accounts.record_path.unlink()

    def _ensure_account(self, client: ClientV2, directory: messages.Directory, key: JWK) -> None:
        with self._account_lock:
            record = self.accounts.load(self.directory_url)
            if record is not None:
                client.net.account = messages.RegistrationResource(uri=record.uri, body=messages.Registration())
                return
            tos = directory.meta.terms_of_service
            if tos and not self.spec.agreeToS:
                raise IssueError(
                    f"Issuer {self.name}: the CA at {self.directory_url} requires agreeing to its terms of service "
                    f"({tos}); read them, then set agreeToS: true in the Issuer",
                    transient=False,
                )
            eab = None
            if self.spec.eab is not None:
                eab = self._eab(key, directory)
            elif client.external_account_required():
                raise IssueError(
                    f"Issuer {self.name}: the CA at {self.directory_url} requires External Account Binding; "
                    "set eab: {keyId, hmacKey} with the values the CA gave you",
                    transient=False,
                )
            registration = messages.NewRegistration.from_data(
                email=self.spec.email,
                terms_of_service_agreed=True if self.spec.agreeToS else None,
                external_account_binding=eab,
            )
            try:
                regr = client.new_account(registration)
                uri = regr.uri
            except acme_errors.ConflictError as exc:
                uri = exc.location  # the key already has an account there
            except messages.Error as exc:
                if retry.problem_code(exc) == "rateLimited":
                    raise retry.to_issue_error(exc, f"Issuer {self.name}: new account at {self.directory_url}") from None
                what = "refused the External Account Binding" if eab is not None and retry.problem_code(exc) in (
                    "unauthorized", "malformed", "badPublicKey", "externalAccountRequired") else "refused the new account"
                raise IssueError(
                    f"Issuer {self.name}: the CA at {self.directory_url} {what}: {retry.describe(exc)}",
                    transient=retry.is_transient(exc),
                    problem=retry.problem_of(exc),
                ) from None
            if not uri:
                raise IssueError(f"Issuer {self.name}: the CA created an account without a URL", transient=True)
            client.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
            self.accounts.save(self.directory_url, uri, self.spec.email)
            log.info("acme.account.registered", issuer=self.name, account=uri, eab=eab is not None)

    def _eab(self, key: JWK, directory: messages.Directory) -> dict[str, Any]:
        assert self.spec.eab is not None
        try:
            secret = resolve(self.spec.eab.hmacKey, dict(self.environ) if self.environ is not None else None)
        except SecretError as exc:
            raise IssueError(f"Issuer {self.name}: eab.hmacKey: {exc}", transient=False) from None
        hmac_key = secret.decode("ascii", "replace").strip()
        try:
            b64decode(hmac_key)
        except (ValueError, TypeError):
            raise IssueError(f"Issuer {self.name}: eab.hmacKey is not base64url as the CA hands it out", transient=False) from None
        return messages.ExternalAccountBinding.from_data(
            account_public_key=key.public_key(), kid=self.spec.eab.keyId, hmac_key=hmac_key, directory=directory
        )


# --- helpers -----------------------------------------------------------------------------------------


def _challenge_key(task: ChallengeTask) -> str:
    return f"{task.kind}|{task.domain}|{task.token}"


def normalize_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}".rstrip("/")


def make_csr(key: pki.PrivateKey, domains: tuple[str, ...] | list[str]) -> x509.CertificateSigningRequest:
    """A CSR naming every domain (the first also as CN when it fits in 64 characters)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])] if len(domains[0]) <= 64 else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
    return builder.sign(key, hashes.SHA256())


def _cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def chosen_top_issuer(chain_pem: str) -> str | None:
    blocks = pki.split_pem_chain(chain_pem.encode())
    if not blocks:
        return None
    return _cn(x509.load_pem_x509_certificate(blocks[-1]).issuer)


def choose_chain(chains: list[str], preferred: str | None) -> str:
    """The chain whose topmost certificate was issued by ``preferred`` (its CN); else one holding a
    certificate of that name; else the CA's default (the first)."""
    if not preferred or len(chains) == 1:
        return chains[0]
    for chain in chains:
        if chosen_top_issuer(chain) == preferred:
            return chain
    for chain in chains:
        certs = [x509.load_pem_x509_certificate(b) for b in pki.split_pem_chain(chain.encode())]
        if any(_cn(c.subject) == preferred for c in certs[1:]):
            return chain
    return chains[0]


def _material(fullchain: str, key: pki.PrivateKey) -> Material:
    blocks = pki.split_pem_chain(fullchain.encode())
    if not blocks:
        raise IssueError("the CA's certificate download holds no PEM certificate", transient=True)
    leaf = x509.load_pem_x509_certificate(blocks[0])
    key_pem = pki.key_to_pem(key)
    if not pki.key_matches(blocks[0], key_pem):
        raise IssueError("the CA returned a certificate for another key", transient=False)
    return Material(cert_pem=blocks[0], chain_pem=b"".join(blocks[1:]), key_pem=key_pem, info=pki.cert_info(leaf))


def _links(response: requests.Response, rel: str) -> list[str]:
    header = response.headers.get("Link")
    if not header:
        return []
    return [link["url"] for link in parse_header_links(header) if link.get("rel") == rel and link.get("url")]


def _directory_entry(directory: messages.Directory, name: str) -> str | None:
    try:
        value = directory[name]
    except KeyError:
        return None
    return value if isinstance(value, str) and value else None


def _status(status: messages.Status | None) -> str:
    return str(status.name) if status is not None else "unknown"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


__all__ = ["AcmeIssuer", "NewOrder", "choose_chain", "make_csr", "normalize_url"]
