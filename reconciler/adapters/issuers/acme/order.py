"""One ACME order (RFC 8555 §7.4): create it, make its challenges answerable and answer them, wait for
validation, finalize, download the chain. ``AcmeIssuer`` runs one ``Order`` per issuance.

Steps that do not depend on each other run at once: the authorizations of an order are fetched and
their challenges answered in parallel. While the CA validates, the order itself is polled (one request
per round whatever the number of names: it turns ``ready`` once every authorization is valid, and
``invalid`` when one fails). Polling follows ``poll.Backoff``: the CA's ``Retry-After`` when it sends
one, else 50 ms growing to at most 3 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from acme import challenges, messages
from cryptography import x509

from reconciler.adapters.issuers.acme import retry
from reconciler.adapters.issuers.acme.ari import AriIndex, cert_id
from reconciler.adapters.issuers.acme.chains import choose_chain, chosen_top_issuer, material_from
from reconciler.adapters.issuers.acme.challenges import ChallengeJournal
from reconciler.adapters.issuers.acme.poll import Backoff, first_pause
from reconciler.adapters.issuers.acme.transport import NewOrder, Session, directory_entry, links, status_name
from reconciler.core import spec as specs
from reconciler.ports import ChallengeTask, IssueError, IssueRequest, Material, Solver
from reconciler.support import pki
from reconciler.support.parallel import at_once


@dataclass(frozen=True)
class _Pending:
    url: str
    domain: str  # as requested: '*.example.com' for a wildcard
    challenge: messages.ChallengeBody
    response: challenges.ChallengeResponse
    task: ChallengeTask
    solver: int  # index into the issuer's solvers


@dataclass
class Order:
    """What one order needs from its issuer; ``run`` carries it out."""

    session: Session
    solver_specs: Sequence[specs.Solver]
    solvers: Sequence[Solver]
    solver_index: Callable[[str], int]  # the solver for a domain the plan did not name (raises IssueError)
    journal: ChallengeJournal
    ari: AriIndex
    timeout: float  # seconds for the whole order
    preferred_chain: str | None
    log: Any  # a bound structlog logger
    # dns-01: (domain, solver index) -> (index of the solver that writes the record, record name or "")
    delegate: Callable[[str, int], tuple[int, str]] | None = None
    profile: str | None = None  # the certificate profile to order (draft-aaron-acme-profiles)
    sleep: Callable[[float], None] = field(default=time.sleep)  # the pause between polls (tests record it)
    pool: Executor | None = None  # the issuer's threads for requests made at once (authorizations)

    def run(
        self,
        request: IssueRequest,
        plan: dict[str, int],
        key: pki.PrivateKey,
        csr: x509.CertificateSigningRequest,
    ) -> Material:
        """Order, validate, finalize and download; the material for ``key``."""
        session, bound = self.session, self.log
        started = time.monotonic()
        deadline = started + self.timeout
        order_url, order = self._new_order(session, request, bound)
        bound = bound.bind(order=order_url)
        bound.info("acme.order.created", domains=list(request.domains), status=status_name(order.status))

        pending = self._pending_challenges(session, order, plan)
        if pending:
            order = self._solve(session, order_url, pending, deadline, bound)
        if order.status not in (messages.STATUS_READY, messages.STATUS_VALID):
            order = self._wait_order(session, order_url, {"ready", "valid"}, deadline)
        if order.status == messages.STATUS_READY:
            order = self._finalize(session, order, order_url, csr, deadline, bound)
        if not order.certificate:
            raise IssueError(
                f"the CA marked order {order_url} valid without a certificate URL", transient=True
            )

        chains = self._download(session, order.certificate)
        chosen = choose_chain(chains, self.preferred_chain)
        if self.preferred_chain and chosen is not chains[0]:
            bound.info("acme.chain.alternate_chosen", preferred=self.preferred_chain)
        elif self.preferred_chain and chosen_top_issuer(chosen) != self.preferred_chain:
            bound.warning(
                "acme.chain.preferred_unavailable",
                preferred=self.preferred_chain,
                offered=[chosen_top_issuer(c) for c in chains],
            )
        material = material_from(chosen, key)
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

    def _new_order(self, session: Session, request: IssueRequest, bound: Any) -> tuple[str, messages.Order]:
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=d) for d in request.domains]
        replaces = self._replaces(session, request, bound)
        try:
            response = session.post(
                session.directory["newOrder"],
                NewOrder(identifiers=identifiers, replaces=replaces, profile=self.profile),
            )
        except messages.Error as exc:
            if replaces is None or retry.problem_code(exc) not in ("alreadyReplaced", "malformed"):
                raise
            # The CA will not accept this certificate as the one replaced (already renewed, or unknown
            # to it): a renewal without ARI is still a renewal.
            bound.warning("acme.order.replaces_refused", replaces=replaces, detail=exc.detail)
            response = session.post(
                session.directory["newOrder"], NewOrder(identifiers=identifiers, profile=self.profile)
            )
        url = response.headers.get("Location")
        if not url:
            raise IssueError("the CA created an order without a Location", transient=True)
        return url, messages.Order.from_json(response.json())

    def _replaces(self, session: Session, request: IssueRequest, bound: Any) -> str | None:
        if request.replaces is None and request.replaces_pem is None:
            return None
        if directory_entry(session.directory, "renewalInfo") is None:
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
            bound.warning(
                "acme.order.replaces_unknown",
                serial=request.replaces.serial,
                reason="the issuer of the replaced certificate is not known to this account's records",
            )
        return ident

    def _pending_challenges(
        self, session: Session, order: messages.Order, plan: dict[str, int]
    ) -> list[_Pending]:
        out: list[_Pending] = []
        fetched = at_once(
            lambda url: messages.Authorization.from_json(session.get_as_post(url).json()),
            list(order.authorizations),
            self.pool,
        )
        for url, authz in zip(order.authorizations, fetched, strict=True):
            ident = authz.identifier.value
            domain = f"*.{ident}" if authz.wildcard else ident
            if authz.status == messages.STATUS_VALID:
                self.log.debug("acme.authz.reused", domain=domain)
                continue
            if authz.status != messages.STATUS_PENDING:
                raise IssueError(
                    f"the authorization for {domain} is {status_name(authz.status)} at the CA",
                    transient=False,
                )
            index = plan.get(domain)
            if index is None:
                index = self.solver_index(domain)
            kind = self.solver_specs[index].challenge_type
            challb = next((c for c in authz.challenges if c.chall.typ == kind), None)
            if challb is None:
                offered = ", ".join(sorted(str(c.chall.typ) for c in authz.challenges)) or "none"
                raise IssueError(
                    f"the CA offers no {kind} challenge for {domain} (it offers: {offered}); choose another solver for it",
                    transient=False,
                )
            response, validation = challb.chall.response_and_validation(session.key)
            record = ""
            if kind == specs.DNS01 and self.delegate is not None:
                index, record = self.delegate(ident, index)
            task = ChallengeTask(
                domain=ident,
                kind=kind,
                token=challb.chall.encode("token"),
                key_authorization=response.key_authorization,
                txt_value=validation if kind == specs.DNS01 else "",
                record=record,
            )
            out.append(_Pending(url, domain, challb, response, task, index))
        return out

    def _solve(
        self, session: Session, url: str, pending: list[_Pending], deadline: float, bound: Any
    ) -> messages.Order:
        groups: dict[int, list[ChallengeTask]] = {}
        for item in pending:
            groups.setdefault(item.solver, []).append(item.task)
        prepared: list[tuple[Solver, list[ChallengeTask]]] = []
        try:
            for index, tasks in groups.items():
                solver = self.solvers[index]
                prepared.append((solver, tasks))
                self.journal.remember(self.solver_specs[index], tasks)
                bound.info("acme.challenge.preparing", solver=repr(solver), domains=[t.domain for t in tasks])
                solver.prepare(tasks)

            def answer(item: _Pending) -> None:
                session.client.answer_challenge(item.challenge, item.response)
                bound.info("acme.challenge.answered", domain=item.domain, kind=item.task.kind)

            at_once(answer, pending, self.pool)
            return self._wait_validation(session, url, pending, deadline)
        finally:
            for solver, tasks in reversed(prepared):
                try:
                    solver.cleanup(tasks)
                except Exception as exc:  # noqa: BLE001 - cleanup must not hide the order's own outcome
                    bound.error(
                        "acme.challenge.cleanup_failed",
                        solver=repr(solver),
                        error=str(exc),
                        note="kept in challenges.jsonl; the next apply or daemon pass cleans it up",
                    )
                else:
                    self.journal.forget(tasks)

    def _wait_validation(
        self, session: Session, url: str, pending: list[_Pending], deadline: float
    ) -> messages.Order:
        """Poll the order (one request per round, however many authorizations it has) until the CA has
        finished validating: the order leaves ``pending`` once every authorization is valid (``ready``) or
        one has failed (``invalid``; then the authorizations are fetched, at once, to say which and why)."""
        names = ", ".join(item.domain for item in pending)
        backoff = Backoff(
            deadline,
            f"the validation of {names}",
            self.timeout,
            self.sleep,
            first_pause(_answer_time(session)),
        )
        while True:
            response = session.get_as_post(url)
            order: messages.Order = messages.Order.from_json(response.json())
            if order.status != messages.STATUS_PENDING:
                break
            backoff.wait(response.headers.get("Retry-After"), "pending")
        if order.status == messages.STATUS_INVALID:
            self._validation_failures(session, pending)
            if order.error is not None:
                raise retry.to_issue_error(order.error, "the CA refused the order")
            raise IssueError(
                f"the CA marked the order invalid while validating {names}, without saying why",
                transient=False,
            )
        return order

    def _validation_failures(self, session: Session, pending: list[_Pending]) -> None:
        """Raise IssueError naming every authorization that failed, with the CA's problem documents."""
        fetched = at_once(
            lambda item: messages.Authorization.from_json(session.get_as_post(item.url).json()),
            pending,
            self.pool,
        )
        failures: list[str] = []
        problem: dict[str, object] = {}
        subproblems: list[dict[str, object]] = []
        for item, authz in zip(pending, fetched, strict=True):
            if authz.status in (messages.STATUS_VALID, messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                continue
            error = next((c.error for c in authz.challenges if c.error is not None), None)
            if error is not None:
                doc = retry.problem_of(error)
                doc.setdefault("identifier", {"type": "dns", "value": item.task.domain})
                subproblems.append(doc)
                problem = problem or doc
                failures.append(f"{item.domain}: {retry.describe(error)}")
            else:
                failures.append(f"{item.domain}: authorization {status_name(authz.status)}")
        if failures:
            if len(subproblems) > 1:
                problem = {**problem, "subproblems": subproblems}
            raise IssueError("validation failed: " + "; ".join(failures), transient=False, problem=problem)

    def _finalize(
        self, session: Session, order: messages.Order, url: str, csr: Any, deadline: float, bound: Any
    ) -> messages.Order:
        """Finalize once. When the answer is lost (a timeout or 5xx retried into orderNotReady), the CA may
        well have accepted it: ask the order instead of failing, so that certificate is never ordered twice."""
        try:
            response = session.post(order.finalize, messages.CertificateRequest(csr=csr))
            order = messages.Order.from_json(response.json())
        except Exception as exc:
            current = messages.Order.from_json(session.get_as_post(url).json())
            if current.status in (messages.STATUS_READY, messages.STATUS_INVALID):
                raise  # the CA did not take it (or refused the order): the error stands
            bound.warning(
                "acme.order.finalize_uncertain",
                error=str(exc) or repr(exc),
                status=status_name(current.status),
                note="the CA accepted an earlier finalize; waiting for that certificate",
            )
            order = current
        bound.info("acme.order.finalizing")
        if order.status != messages.STATUS_VALID:
            order = self._wait_order(session, url, {"valid"}, deadline)
        return order

    def _wait_order(self, session: Session, url: str, wanted: set[str], deadline: float) -> messages.Order:
        backoff = Backoff(
            deadline, f"the order {url}", self.timeout, self.sleep, first_pause(_answer_time(session))
        )
        while True:
            response = session.get_as_post(url)
            order: messages.Order = messages.Order.from_json(response.json())
            status = status_name(order.status)
            if status in wanted:
                return order
            if order.status == messages.STATUS_INVALID:
                if order.error is not None:
                    raise retry.to_issue_error(order.error, "the CA refused the order")
                raise IssueError("the CA marked the order invalid without saying why", transient=False)
            backoff.wait(response.headers.get("Retry-After"), status)

    def _download(self, session: Session, url: str) -> list[str]:
        response = session.get_as_post(url)
        chains = [response.text]
        if self.preferred_chain:
            for link in links(response, "alternate"):
                chains.append(session.get_as_post(link).text)
        return chains


def _answer_time(session: Session) -> float | None:
    """How long this CA typically takes to answer a request (None when not measured)."""
    measured = getattr(session, "answer_time", None)  # a stand-in session of a test may have none
    return measured.value if measured is not None else None
