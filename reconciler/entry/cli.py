"""certctl: validate | plan | apply | status | describe | renew | revoke | account | daemon | schema | import | init |
completion | backend."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from reconciler import __version__
from reconciler.app.errors import UsageError
from reconciler.app.loader import InvalidDesiredState, load
from reconciler.core import render
from reconciler.core.durations import parse_time
from reconciler.core.model import DesiredState
from reconciler.core.plan import Plan, action_from_json
from reconciler.core.planner import desired_fingerprint, with_fingerprints
from reconciler.core.planner import plan as make_plan
from reconciler.entry.console import Output, interactive
from reconciler.ports import StateBackend
from reconciler.state.statedir import LockBusy, StateDir
from reconciler.support.clock import SYSTEM
from reconciler.support.logging import configure, get_logger

log = get_logger()

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("CERTCTL_DIR") or "desired-state")


def _node(args: argparse.Namespace) -> str:
    from reconciler.wiring import node_name

    return node_name(getattr(args, "node", None))


def _load(args: argparse.Namespace) -> DesiredState:
    from reconciler.app.loader import check_profiles
    from reconciler.core.fleet import node_view
    from reconciler.state.cache import default_dir
    from reconciler.wiring import state_dir_for

    desired = node_view(load(_dir(args), cache_dir=default_dir()), _node(args))
    check_profiles(desired, state_dir_for(_dir(args), desired, args.state_dir))
    return desired


def _state(args: argparse.Namespace, desired: DesiredState) -> StateBackend:
    from reconciler.wiring import open_state, state_dir_for

    state = open_state(desired, state_dir_for(_dir(args), desired, args.state_dir), _node(args))
    state.report_access()
    return state


def _now() -> datetime:
    return SYSTEM.now().replace(microsecond=0)


def _world(args: argparse.Namespace, desired: DesiredState) -> Any:
    from reconciler.wiring import build

    return build(desired, _state(args, desired))


def _observe(world: Any, now: datetime | None = None, *, locked: bool = False) -> Any:
    from reconciler.app.observe import observe_current

    return observe_current(world, now or _now(), locked=locked)


# --- commands ---------------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    desired = _load(args)
    _keep(desired)
    print(
        f"Valid: {len(desired.certificates)} certificate(s), {len(desired.issuers)} issuer(s), "
        f"{len(desired.stores)} store(s), {len(desired.iis_hosts)} IIS host(s) in {desired.directory}."
    )
    return EXIT_OK


def _output(args: argparse.Namespace) -> Output:
    return Output(sys.stdout, color=not getattr(args, "no_color", False))


def _emit(args: argparse.Namespace, plan: Plan) -> None:
    if args.out:
        from reconciler.support.fs import atomic_write

        atomic_write(Path(args.out), json.dumps(plan.to_json(), indent=2) + "\n")
    out = _output(args)
    if getattr(args, "json", False):
        out.write(json.dumps(plan.to_json(), indent=2) + "\n")
    elif getattr(args, "markdown", False):
        out.write(render.markdown(plan))
    else:
        out.lines(render.text_lines(plan))


def _secret_problems(args: argparse.Namespace, desired: DesiredState, plan: Plan) -> bool:
    """Report every secret the plan's actions need that cannot be read (file:line:col); True if any."""
    if getattr(args, "no_secret_check", False):
        return False
    from reconciler.app.preflight import unreadable_secrets

    problems = unreadable_secrets(desired, plan)
    for d in problems:
        sys.stderr.write(f"{d}\n")
    if problems:
        sys.stderr.write(
            f"certctl: {len(problems)} secret(s) that the planned actions need cannot be read; "
            "nothing was changed.\n"
        )
    return bool(problems)


def cmd_plan(args: argparse.Namespace) -> int:
    desired = _load(args)
    now = _now()
    at = parse_time(args.at, now) if args.at else now
    world = _world(args, desired)
    observed = _observe(world)
    plan = make_plan(desired, observed, at)
    from reconciler.app.challenges import UNSOLVABLE, annotate
    from reconciler.core.planner import PROFILE_UNKNOWN

    plan = annotate(desired, observed, plan)
    _keep(desired, world, observed, plan)
    if args.out or args.json:
        plan = with_fingerprints(plan, desired, observed)
    _emit(args, plan)
    unsolvable = [n for n in plan.notes if n.code in (UNSOLVABLE, PROFILE_UNKNOWN)]
    for note in unsolvable:
        print(f"certctl: error: certificate {note.certificate}: {note.message}", file=sys.stderr)
    if _secret_problems(args, desired, plan) or unsolvable:
        return EXIT_ERROR
    if args.detailed_exitcode and plan.pending:
        return EXIT_CHANGES
    return EXIT_OK


def cmd_apply(args: argparse.Namespace, forced: frozenset[str] = frozenset()) -> int:
    desired = _load(args)
    world = _world(args, desired)
    out = _output(args)
    with world.state.lock(wait=args.lock_timeout):
        from reconciler.app.recovery import recover

        recover(world)  # what a crash, kill or full disk left half-done (see Safety guarantees in the README)
        from reconciler.app.reconcile import sync_accounts

        sync_accounts(world)  # an Issuer whose email changed: its ACME account's contact follows
        observed = _observe(world, locked=True)
        planfile = getattr(args, "planfile", None)
        if planfile:
            plan = _saved_plan(Path(planfile), desired, observed)
        else:
            from reconciler.app.challenges import annotate

            plan = annotate(desired, observed, make_plan(desired, observed, _now(), forced))
        out.lines(render.text_lines(plan))
        _keep(desired, world, observed, plan)
        # This process ends after the apply: what it loaded (the desired state, the world) lives until then,
        # so the cyclic collector need not walk it again and again while thousands of actions run; it runs
        # again from here on (actions make garbage: responses, tracebacks), over what they make.
        gc.freeze()
        gc.enable()
        code = EXIT_OK
        if plan.changes:
            if _secret_problems(args, desired, plan):
                return EXIT_ERROR
            # Terraform's rule: a person at a terminal confirms what they just read; a saved plan was reviewed
            # when it was made, and cron, services and pipelines (no terminal) proceed.
            if not planfile and not args.auto_approve and interactive():
                count = len(plan.actions)
                if not out.confirm(f"Apply {count} action{'s' if count != 1 else ''}?"):
                    out.line(("Apply cancelled; nothing was changed.", "warning"))
                    return EXIT_ERROR
            code = _execute(args, world, plan, out)
        from reconciler.app.fleet import is_fleet

        if is_fleet(world.state):
            code = _follow_fleet(args, world, plan, code, out)
        return code


FOLLOW_ROUNDS = 10  # apply waits for, then installs, at most this many rounds of other nodes' issuances
FOLLOW_WAIT = 1800.0  # seconds apply waits for another node's issuance (its lease expires long before)


def _follow_fleet(args: argparse.Namespace, world: Any, first: Plan, code: int, out: Output) -> int:
    """Fleet: wait for the issuances other nodes hold, install what they issued, then report this node."""
    from reconciler.app.fleet import report_pass, wait_for_others, waiting_for

    # The first plan left out what depends on another node's issuance; if that issuance has finished by the
    # time this looks again, there is nothing to wait for, but those actions are still to do.
    waited = bool(waiting_for(first))
    for _ in range(FOLLOW_ROUNDS):
        now = _now()
        observed = _observe(world, now, locked=True)
        plan = make_plan(world.desired, observed, now)
        waiting = waiting_for(plan)
        if waiting:
            for note in plan.notes:
                if note.certificate in waiting:
                    out.line(("Waiting: ", "warning"), (f"{note.certificate}: {note.message}", ""))
            if not wait_for_others(world.state, waiting, FOLLOW_WAIT):
                sys.stderr.write(
                    f"certctl: still issuing elsewhere after {FOLLOW_WAIT:g}s: {', '.join(waiting)}\n"
                )
                code = EXIT_ERROR
                break
            waited = True
            continue
        if plan.changes and waited:
            out.lines([(), *render.text_lines(plan)])
            code = max(code, _execute(args, world, plan, out))
            waited = False
            continue
        break
    report_pass(world, plan, observed, now)
    return code


def _saved_plan(path: Path, desired: DesiredState, observed: Any) -> Plan:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the plan file {path}: {exc}") from None
    if data.get("format_version") != 1:
        raise UsageError(f"{path} is not a certctl plan (format_version 1)")
    saved = data.get("fingerprints", {})
    if saved.get("desired") != desired_fingerprint(desired):
        raise UsageError(
            f"stale plan: the desired state in {desired.directory} changed since {path} was made; "
            "run certctl plan again"
        )
    if saved.get("observed") != observed.fingerprint():
        raise UsageError(
            f"stale plan: what certctl observes (stores, hosts, task outputs, state) changed since {path} "
            "was made; run certctl plan again"
        )
    return Plan(
        at=datetime.fromisoformat(data["at"].replace("Z", "+00:00")),
        directory=data["source"]["dir"],
        revision=data["source"]["revision"],
        actions=tuple(action_from_json(a) for a in data["actions"]),
        certificates=(),
        observed_fingerprint=saved.get("observed", ""),
        desired_fingerprint=saved.get("desired", ""),
    )


def _execute(args: argparse.Namespace, world: Any, plan: Plan, out: Output) -> int:
    from reconciler.app.executor import Outcome
    from reconciler.app.reconcile import apply_plan

    progress = out.terminal and args.log_format != "json"
    total = len(plan.actions)
    finished = 0
    marks = {"done": ("ok", "ok"), "failed": ("FAILED", "error"), "skipped": ("skipped", "warning")}

    def show(outcome: Outcome) -> None:
        nonlocal finished
        finished += 1
        if progress:
            mark, style = marks[outcome.status]
            out.line(
                (f"  {finished:>{len(str(total))}}/{total} ", "dim"),
                (f"{mark:<7}", style),
                (f" {outcome.action.id}", ""),
                (f" ({outcome.seconds:.1f}s)", "dim"),
                (f": {outcome.error}" if outcome.error else "", style),
            )

    result = apply_plan(world, plan, clock=SYSTEM, on_outcome=show)
    failed = [o for o in result.outcomes if o.status != "done"]
    if failed or result.verify_failures:
        lines: list[render.Line] = [(), (("Not done:", "heading"),)]
        lines += [
            (
                (f"  {o.status}: ", "error" if o.status == "failed" else "warning"),
                (f"{o.action.id}: {o.error}", ""),
            )
            for o in failed
        ]
        lines += [(("  failed: ", "error"), (v, "")) for v in result.verify_failures]
        out.lines(lines)
    summary = (
        f"Apply complete: {result.count('done')} done, {result.count('failed')} failed, "
        f"{result.count('skipped')} skipped"
        + (f", {len(result.verify_failures)} verification(s) failed" if result.verify_failures else "")
        + "."
    )
    out.lines([(), ((summary, "ok" if result.ok else "error"),)])
    return EXIT_OK if result.ok else EXIT_ERROR


def cmd_renew(args: argparse.Namespace) -> int:
    desired = _load(args)
    if args.all == bool(args.names):
        raise UsageError(
            "name the certificates to renew, or give --all (e.g. certctl renew www-example-com, "
            "certctl renew --all)"
        )
    unknown = [n for n in args.names if n not in desired.certificates]
    if unknown:
        raise UsageError(
            f"no Certificate named {', '.join(repr(n) for n in unknown)} "
            f"(known: {', '.join(sorted(desired.certificates)) or 'none'})"
        )
    args.planfile = None
    return cmd_apply(args, forced=frozenset(desired.certificates if args.all else args.names))


def _task_runs(state: StateDir, name: str) -> dict[int, Any]:
    """The newest journaled outcome of each deployment task of certificate ``name``."""
    from reconciler.core.describe import TaskRun

    runs: dict[int, TaskRun] = {}
    prefix = f"deploy/{name}/task/"
    for entry in state.journal_entries():
        action = entry.get("action") or ""
        index = action.removeprefix(prefix).partition("-")[0] if action.startswith(prefix) else ""
        if entry.get("event") in ("done", "failed") and index.isdigit():
            error = entry.get("error")
            runs[int(index)] = TaskRun(
                str(entry.get("at", ""))[:19] + "Z",
                str(entry["event"]),
                error if isinstance(error, str) else None,
            )
    return runs


def cmd_revoke(args: argparse.Namespace) -> int:
    from reconciler.app.revocation import current_or_fail, revoke_certificate
    from reconciler.ports import RevokeError

    desired = _load(args)
    world = _world(args, desired)
    current = current_or_fail(world, args.name)
    question = (
        f"Revoke certificate {args.name} ({current.info.thumbprint}, expires "
        f"{current.info.not_after:%Y-%m-%d}) with reason {args.reason}? Every server that uses it must get "
        "its replacement from the next apply."
    )
    out = _output(args)
    # asked before the lock, so a waiting question never holds up the daemon; without a terminal (scripts, CI)
    # the command goes ahead, as apply does
    if not args.yes and interactive() and not out.confirm_irreversible(question):
        out.line(("Revocation cancelled; nothing was changed.", "warning"))
        return EXIT_ERROR
    with world.state.lock(wait=args.lock_timeout, purpose="revoke"):
        if current_or_fail(world, args.name).info.thumbprint != current.info.thumbprint:
            raise UsageError(f"certificate {args.name} was renewed while you answered; nothing was revoked")
        try:
            version, issuer = revoke_certificate(world, args.name, args.reason, _now())
        except RevokeError as exc:
            raise UsageError(f"certificate {args.name} was not revoked: {exc}") from None
    key = " with a new key" if args.reason == "keyCompromise" else ""
    sys.stdout.write(
        f"Revoked {args.name} ({version.info.thumbprint}) through Issuer {issuer}, reason {args.reason}.\n"
        f"The next `certctl apply` (or the daemon's next pass) issues its replacement{key}.\n"
    )
    return EXIT_OK


def cmd_account_rollover(args: argparse.Namespace) -> int:
    from reconciler.ports import IssueError

    desired = _load(args)
    issuer = desired.issuers.get(args.issuer)
    if issuer is None:
        raise UsageError(
            f"no Issuer named {args.issuer!r} (known: {', '.join(sorted(desired.issuers)) or 'none'})"
        )
    if issuer.spec.acme is None:
        raise UsageError(f"Issuer {args.issuer} is a local CA: it has no ACME account")
    world = _world(args, desired)
    with world.state.lock(wait=args.lock_timeout, purpose="account key rollover"):
        try:
            account = world.issuers[args.issuer].rollover_key()
        except IssueError as exc:
            raise UsageError(f"the account key of Issuer {args.issuer} was not replaced: {exc}") from None
    sys.stdout.write(
        f"Issuer {args.issuer}: the account {account} now signs with a new key "
        f"(kept in the state dir, mode 0600); the old key no longer works.\n"
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    desired = _load(args)
    world = _world(args, desired)
    if getattr(args, "fleet", False):
        from reconciler.app.fleet import fleet_status, is_fleet

        if not is_fleet(world.state):
            raise UsageError("status --fleet needs a shared backend: Settings.backend.postgres")
        doc = fleet_status(world.state)
        sys.stdout.write(json.dumps(doc, indent=2) + "\n" if args.json else render.fleet_text(doc))
        return EXIT_OK
    now = _now()
    observed = _observe(world, now)
    plan = make_plan(desired, observed, now)
    _keep(desired, world, observed, plan)
    out = _output(args)
    names = getattr(args, "names", None) or []
    unknown = [n for n in names if n not in desired.certificates]
    if unknown:
        raise UsageError(
            f"no Certificate named {', '.join(repr(n) for n in unknown)} "
            f"(known: {', '.join(sorted(desired.certificates)) or 'none'})"
        )
    from reconciler.core.status import status_document, status_rows

    rows = [r for r in status_rows(desired, observed, now, plan) if not names or r.name in names]
    if getattr(args, "check", False):
        from reconciler.core.describe import check

        code, problems = check(rows, now, desired.settings.notify.expiryWarning)
        out.lines(render.check_lines(code, problems, len(rows)))
        return code
    applied = world.state.applied()
    if names:
        from reconciler.core.describe import describe

        details = [describe(desired, observed, plan, n, now, _task_runs(world.state, n)) for n in names]
        if args.json:
            out.write(json.dumps(details if len(details) > 1 else details[0], indent=2) + "\n")
        else:
            for i, detail in enumerate(details):
                out.lines(([()] if i else []) + render.describe_lines(detail))
        return EXIT_OK
    if args.json:
        out.write(json.dumps(status_document(desired, rows, applied, now), indent=2) + "\n")
    else:
        out.write(render.status_text(rows))
        if applied:
            revision = applied.get("revision") or "none (not a git repository)"
            failures = "" if applied.get("ok") else ", with failures"
            out.write(f"\nLast apply: {applied.get('at')}, revision {revision}{failures}.\n")
    return EXIT_OK


def cmd_describe(args: argparse.Namespace) -> int:
    args.names = [args.name]
    args.check = False
    return cmd_status(args)


def cmd_schema(args: argparse.Namespace) -> int:
    from reconciler.app.schema import render as render_schema
    from reconciler.app.schema import schemas, write_schemas

    if not args.out:
        sys.stdout.write(render_schema(schemas()["certctl.json"]))
        return EXIT_OK
    for path in write_schemas(Path(args.out)):
        print(path)
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace) -> int:
    from reconciler.entry.daemon import DaemonOptions, run_daemon

    return run_daemon(
        DaemonOptions(
            directory=_dir(args),
            state_dir=args.state_dir,
            git_pull=args.git_pull,
            metrics_address=args.metrics_address,
            no_metrics=args.no_metrics,
            stop_grace=DaemonOptions.stop_grace_from_env(),
            node=args.node,
        )
    )


def cmd_backend_migrate(args: argparse.Namespace) -> int:
    from reconciler.app.fleet import is_fleet
    from reconciler.state.postgres import migrate

    desired = _load(args)
    state = _state(args, desired)
    if not is_fleet(state):
        raise UsageError(
            "no backend to migrate: Settings.backend.postgres is not set (the state dir needs no migration)"
        )
    before, after = migrate(state.db, state.sealer)  # type: ignore[attr-defined]
    print(f"Schema version {after}" + (f" (was {before})." if before != after else ": up to date."))
    return EXIT_OK


def cmd_backend_import(args: argparse.Namespace) -> int:
    from reconciler.app.fleet import import_state_dir, is_fleet
    from reconciler.wiring import state_dir_for

    desired = _load(args)
    state = _state(args, desired)
    if not is_fleet(state):
        raise UsageError("nothing to import into: Settings.backend.postgres is not set")
    source_path = Path(args.source) if args.source else state_dir_for(_dir(args), desired, args.state_dir)
    if not source_path.is_dir():
        raise UsageError(f"the state dir {source_path} does not exist")
    source = StateDir(source_path)
    with source.lock(wait=args.lock_timeout, purpose="backend import"):
        counts = import_state_dir(source, state, desired.issuers)
    print(
        f"Imported from {source_path}: {counts['versions']} version(s) ({counts['already']} already there), "
        f"{counts['attempts']} attempt record(s), {counts['blobs']} CA/account file(s)"
        + (f"; {counts['kept']} kept as the database had them" if counts["kept"] else "")
        + "."
    )
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from reconciler.app.importer import ImportOptions, run_import

    desired = _load(args)
    opts = ImportOptions(
        directory=_dir(args),
        iis_host=args.iis_host,
        issuer=args.issuer,
        out=Path(args.out) if args.out else None,
        site=args.site,
    )
    return run_import(opts, _world(args, desired))


def cmd_init(args: argparse.Namespace) -> int:
    from reconciler.app.starter import write_starter

    folder = Path(args.folder or args.dir or os.environ.get("CERTCTL_DIR") or "desired-state")
    for path in write_starter(folder):
        print(f"wrote {path}")
    print(f"Next: certctl plan -d {folder}   (then certctl apply -d {folder})")
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    from reconciler.entry.completion import script

    sys.stdout.write(script(parser(), args.shell))
    return EXIT_OK


# --- parser ----------------------------------------------------------------------------------------------


def _lock_timeout(p: Any) -> None:
    _add(
        p,
        "--lock-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for another certctl (default 10)",
        example="--lock-timeout 60",
        metavar="SECONDS",
    )


def _auto_approve(p: Any) -> None:
    _add(
        p,
        "-y",
        "--auto-approve",
        action="store_true",
        help="do not ask for confirmation on a terminal",
        example="-y",
    )


def _add(p: Any, *flags: str, example: str, **kwargs: Any) -> None:
    """An argument whose help ends with an example (every argument has one)."""
    kwargs["help"] = f"{kwargs.get('help', '')} (e.g. {example})".strip()
    p.add_argument(*flags, **kwargs)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add(
        common,
        "-d",
        "--dir",
        help="desired-state directory (default: ./desired-state or $CERTCTL_DIR)",
        example="-d desired-state",
        metavar="DIR",
    )
    _add(
        common,
        "--state-dir",
        help="state directory (overrides Settings.stateDir)",
        example="--state-dir /var/lib/certctl",
        metavar="DIR",
    )
    _add(
        common,
        "--node",
        default=os.environ.get("CERTCTL_NODE"),
        help="this node's name in a fleet (default: $CERTCTL_NODE, else the host name)",
        example="--node web01",
    )
    _add(
        common,
        "--log-format",
        choices=["console", "json"],
        default=os.environ.get("CERTCTL_LOG_FORMAT", "console"),
        help="log events on stderr as text or JSON lines ($CERTCTL_LOG_FORMAT)",
        example="--log-format json",
    )
    _add(
        common,
        "--log-level",
        default=os.environ.get("CERTCTL_LOG_LEVEL"),
        choices=["debug", "info", "warning", "error"],
        help="log level ($CERTCTL_LOG_LEVEL; default: warning on a terminal, info otherwise)",
        example="--log-level debug",
    )
    _add(
        common,
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log events on stderr: -v info, -vv debug",
        example="-v",
    )
    _add(
        common,
        "--no-color",
        action="store_true",
        help="no colour on a terminal (also: NO_COLOR=1)",
        example="--no-color",
    )
    p = argparse.ArgumentParser(
        prog="certctl",
        description="Declarative TLS certificates: plan, then apply.",
        epilog="Start with `certctl init`, then `certctl plan` and `certctl apply`. "
        "Documentation: docs/README.md in the source repository.",
    )
    _add(
        p,
        "--version",
        action="version",
        version=f"certctl {__version__}",
        help="print the version and exit",
        example="certctl --version",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate", parents=[common], help="load and check the specs")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("plan", parents=[common], help="show what apply would do; change nothing")
    fmt = s.add_mutually_exclusive_group()
    _add(fmt, "--json", action="store_true", help="the machine format", example="--json | jq .summary")
    _add(
        fmt,
        "--markdown",
        action="store_true",
        help="for a pull-request comment",
        example="--markdown > plan.md",
    )
    _add(
        s,
        "--out",
        help="also save the plan (JSON) to FILE, for `certctl apply FILE`",
        example="--out plan.json",
        metavar="FILE",
    )
    _add(
        s,
        "--at",
        help="plan as of another time: a date, a date-time, or an offset from now",
        example="--at 2027-01-15, --at +30d, --at=-5d",
        metavar="TIME",
    )
    _add(
        s,
        "--detailed-exitcode",
        action="store_true",
        help="exit 2 while anything is pending (changes, deferred or failing certificates), 0 when nothing is",
        example="--detailed-exitcode || echo pending",
    )
    _add(
        s,
        "--no-secret-check",
        action="store_true",
        help="do not check that the secrets the planned actions need can be read (a pull-request runner "
        "that must not hold them)",
        example="--no-secret-check",
    )
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("apply", parents=[common], help="plan and carry it out (asks first on a terminal)")
    _add(
        s,
        "planfile",
        nargs="?",
        help="a plan saved by `certctl plan --out`, applied without asking; refused if stale",
        example="certctl apply plan.json",
    )
    _auto_approve(s)
    _lock_timeout(s)
    s.set_defaults(fn=cmd_apply)

    s = sub.add_parser(
        "status",
        parents=[common],
        help="every certificate: state, expiry, renewal, last error; or one in full",
    )
    _add(
        s,
        "names",
        nargs="*",
        help="show these certificates in full",
        example="certctl status www-example-com",
        metavar="NAME",
    )
    _add(s, "--json", action="store_true", help="the machine format", example="--json")
    _add(
        s,
        "--check",
        action="store_true",
        help="monitoring (Nagios): exit 0 OK, 1 warning (renewal overdue or deferred), 2 critical (expired, "
        "failing, or expiring within notify.expiryWarning), 3 unknown; one line per problem",
        example="--check",
    )
    _add(
        s,
        "--fleet",
        action="store_true",
        help="every node of the fleet, and which versions they serve",
        example="--fleet",
    )
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("describe", parents=[common], help="everything about one certificate")
    _add(s, "name", help="the Certificate's name", example="certctl describe www-example-com")
    _add(s, "--json", action="store_true", help="the machine format", example="--json")
    s.set_defaults(fn=cmd_describe)

    s = sub.add_parser("renew", parents=[common], help="force a renewal now (overrides backoff)")
    _add(
        s,
        "names",
        nargs="*",
        help="the certificates to renew",
        example="certctl renew www api",
        metavar="NAME",
    )
    _add(s, "--all", action="store_true", help="renew every certificate", example="certctl renew --all")
    _auto_approve(s)
    _lock_timeout(s)
    s.set_defaults(fn=cmd_renew)

    from reconciler.ports import REVOCATION_REASONS

    s = sub.add_parser(
        "revoke", parents=[common], help="revoke a certificate's current version (the next apply replaces it)"
    )
    _add(s, "name", help="the Certificate to revoke", example="www-example-com")
    _add(
        s,
        "--reason",
        default="unspecified",
        choices=list(REVOCATION_REASONS),
        help="RFC 5280 reason (default unspecified; keyCompromise also forces a new key)",
        example="--reason superseded",
    )
    _add(
        s, "--yes", "-y", action="store_true", help="do not ask for confirmation on a terminal", example="-y"
    )
    _lock_timeout(s)
    s.set_defaults(fn=cmd_revoke)

    s = sub.add_parser("account", help="ACME accounts")
    account = s.add_subparsers(dest="account_command", required=True, metavar="SUBCOMMAND")
    s = account.add_parser(
        "rollover", parents=[common], help="replace an ACME Issuer's account key (RFC 8555 key change)"
    )
    _add(s, "issuer", help="the ACME Issuer whose account key is replaced", example="letsencrypt")
    _lock_timeout(s)
    s.set_defaults(fn=cmd_account_rollover)

    s = sub.add_parser("daemon", parents=[common], help="reconcile continuously")
    _add(
        s,
        "--git-pull",
        action="store_true",
        help="fast-forward the desired-state repository each interval",
        example="--git-pull",
    )
    _add(
        s,
        "--metrics-address",
        help="host:port for /healthz, /metrics, /status (default 127.0.0.1:9464)",
        example="--metrics-address 0.0.0.0:9464",
        metavar="HOST:PORT",
    )
    _add(s, "--no-metrics", action="store_true", help="serve no HTTP endpoint", example="--no-metrics")
    s.set_defaults(fn=cmd_daemon)

    s = sub.add_parser("schema", parents=[common], help="print (or write) the JSON Schemas of every kind")
    _add(
        s,
        "--out",
        help="write one schema per kind and certctl.json into FOLDER (default: print certctl.json)",
        example="--out schemas",
        metavar="FOLDER",
    )
    s.set_defaults(fn=cmd_schema)

    s = sub.add_parser("backend", help="the shared state backend (Settings.backend.postgres)")
    backend = s.add_subparsers(dest="backend_command", required=True, metavar="SUBCOMMAND")
    b = backend.add_parser("migrate", parents=[common], help="create or upgrade the database schema")
    b.set_defaults(fn=cmd_backend_migrate)
    b = backend.add_parser(
        "import", parents=[common], help="copy a state dir (CAs, accounts, versions, keys, attempts) in"
    )
    _add(
        b,
        "--from",
        dest="source",
        help="the state dir to copy (default: this node's)",
        example="--from /var/lib/certctl",
        metavar="STATE_DIR",
    )
    _lock_timeout(b)
    b.set_defaults(fn=cmd_backend_import)

    s = sub.add_parser(
        "import", parents=[common], help="write Certificate specs for what an IIS host serves today"
    )
    _add(
        s, "--iis-host", required=True, help="the IisHost to read", example="--iis-host web01", metavar="NAME"
    )
    _add(
        s,
        "--issuer",
        help="Issuer for the new specs (required when more than one is defined)",
        example="--issuer letsencrypt",
        metavar="NAME",
    )
    _add(s, "--site", help="only this IIS site", example='--site "Default Web Site"', metavar="NAME")
    _add(
        s,
        "--out",
        help="file to write (default: <dir>/imported-<host>.yaml)",
        example="--out imported.yaml",
        metavar="FILE",
    )
    s.set_defaults(fn=cmd_import)

    s = sub.add_parser("init", parents=[common], help="write a commented starter desired state")
    _add(
        s,
        "folder",
        nargs="?",
        help="where (default: -d DIR, $CERTCTL_DIR or ./desired-state)",
        example="certctl init desired-state",
        metavar="DIR",
    )
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("completion", help="print a shell completion script")
    _add(
        s,
        "shell",
        choices=["bash", "zsh", "powershell"],
        help="the shell",
        example='eval "$(certctl completion bash)"',
    )
    s.set_defaults(fn=cmd_completion, log_format="console", log_level=None, verbose=0)
    return p


def _join_dash_values(argv: list[str]) -> list[str]:
    """``--at -5d`` as ``--at=-5d``: argparse would take a value starting with '-' for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if (
            argv[i] == "--at"
            and i + 1 < len(argv)
            and argv[i + 1].startswith("-")
            and argv[i + 1][1:2].isdigit()
        ):
            out.append(f"--at={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _log_level(args: argparse.Namespace) -> str:
    """--log-level or $CERTCTL_LOG_LEVEL; else -v/-vv; else warning for a person at a terminal (log lines
    would interleave with the output they read) and info for services, cron and JSON logs."""
    if args.log_level:
        return str(args.log_level)
    if args.verbose:
        return "debug" if args.verbose > 1 else "info"
    console = args.log_format == "console" and sys.stderr.isatty()
    return "warning" if console else "info"


# What a one-shot command built (the desired state, the observed world, the plan), kept by ``run`` until the
# process ends: freeing millions of objects one by one only to exit took 0.15 s of a plan of 10,000.
_KEPT: list[object] | None = None
_ONE_SHOT = False  # the last command main() ran was not the daemon


def _keep(*values: object) -> None:
    if _KEPT is not None:
        _KEPT.extend(values)


def run() -> NoReturn:
    """The ``certctl`` program: ``main``, then, after a one-shot command, the end of the process without
    tearing down what it built. Every file it wrote is closed and every state line written (an apply
    flushes the state dir before it returns); stdout and stderr are flushed here. The daemon, and a
    command that exits through SystemExit (usage errors, --help), end the usual way."""
    global _KEPT
    _KEPT = []
    code = main()
    if not _ONE_SHOT:
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (``| head``): as main treats it
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    global _ONE_SHOT
    args = parser().parse_args(_join_dash_values(list(sys.argv[1:] if argv is None else argv)))
    _ONE_SHOT = args.fn is not cmd_daemon
    collecting = gc.isenabled()
    if args.fn is not cmd_daemon:
        # A one-shot command builds what it reads (documents, records, a store's versions: millions of small
        # objects) and keeps all of it until it exits; the cyclic collector would walk that again and again,
        # a quarter of a plan's time at 10,000 certificates, to free almost nothing. An apply turns it back
        # on before its actions run.
        gc.disable()
    try:
        return _run(args)
    finally:
        if collecting:
            gc.enable()


def _run(args: argparse.Namespace) -> int:
    configure(args.log_format, _log_level(args))
    checking = bool(getattr(args, "check", False))
    error = 3 if checking else EXIT_ERROR  # Nagios: UNKNOWN when the check itself cannot run
    try:
        return int(args.fn(args))
    except InvalidDesiredState as exc:
        for d in exc.diagnostics:
            sys.stderr.write(f"{d}\n")
        sys.stderr.write(f"certctl: {len(exc.diagnostics)} problem(s) found; nothing was changed.\n")
        if checking:
            print(f"CERTCTL UNKNOWN - the desired state is invalid ({len(exc.diagnostics)} problem(s))")
        return error
    except (UsageError, LockBusy) as exc:
        sys.stderr.write(f"certctl: {exc}\n")
        return error
    except KeyboardInterrupt:
        sys.stderr.write("certctl: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # e.g. a full disk under the state dir before any action started
        sys.stderr.write(f"certctl: {exc}\n")
        return error
    except ValueError as exc:  # e.g. a bad --at
        sys.stderr.write(f"certctl: {exc}\n")
        return error
