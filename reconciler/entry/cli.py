"""certctl: validate | plan | apply | status | renew | daemon | schema | import | backend."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from reconciler import __version__
from reconciler.app.errors import UsageError
from reconciler.app.loader import InvalidDesiredState, load
from reconciler.core import render
from reconciler.core.durations import parse_time
from reconciler.core.model import DesiredState
from reconciler.core.plan import Plan, action_from_json
from reconciler.core.planner import desired_fingerprint, with_fingerprints
from reconciler.core.planner import plan as make_plan
from reconciler.core.status import status_document, status_rows
from reconciler.ports import StateBackend
from reconciler.state.statedir import LockBusy, StateDir
from reconciler.support.clock import SYSTEM
from reconciler.support.logging import configure

log = structlog.get_logger()

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get("CERTCTL_DIR") or "desired-state")


def _node(args: argparse.Namespace) -> str:
    from reconciler.wiring import node_name

    return node_name(getattr(args, "node", None))


def _load(args: argparse.Namespace) -> DesiredState:
    from reconciler.core.fleet import node_view
    from reconciler.state.cache import default_dir

    return node_view(load(_dir(args), cache_dir=default_dir()), _node(args))


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
    print(f"Valid: {len(desired.certificates)} certificate(s), {len(desired.issuers)} issuer(s), "
          f"{len(desired.stores)} store(s), {len(desired.iis_hosts)} IIS host(s) in {desired.directory}.")
    return EXIT_OK


def _emit(args: argparse.Namespace, plan: Plan) -> None:
    if args.out:
        from reconciler.support.fs import atomic_write

        atomic_write(Path(args.out), json.dumps(plan.to_json(), indent=2) + "\n")
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(plan.to_json(), indent=2) + "\n")
    elif getattr(args, "markdown", False):
        sys.stdout.write(render.markdown(plan))
    else:
        sys.stdout.write(render.text(plan))


def cmd_plan(args: argparse.Namespace) -> int:
    desired = _load(args)
    now = _now()
    at = parse_time(args.at, now) if args.at else now
    world = _world(args, desired)
    observed = _observe(world)
    plan = make_plan(desired, observed, at)
    from reconciler.app.challenges import UNSOLVABLE, annotate

    plan = annotate(desired, observed, plan)
    if args.out or args.json:
        plan = with_fingerprints(plan, desired, observed)
    _emit(args, plan)
    unsolvable = [n for n in plan.notes if n.code == UNSOLVABLE]
    for note in unsolvable:
        print(f"certctl: error: certificate {note.certificate}: {note.message}", file=sys.stderr)
    if unsolvable:
        return EXIT_ERROR
    if args.detailed_exitcode and plan.changes:
        return EXIT_CHANGES
    return EXIT_OK


def cmd_apply(args: argparse.Namespace, forced: frozenset[str] = frozenset()) -> int:
    desired = _load(args)
    world = _world(args, desired)
    with world.state.lock(wait=args.lock_timeout):
        from reconciler.app.recovery import recover

        recover(world)  # what a crash, kill or full disk left half-done (see Safety guarantees in the README)
        observed = _observe(world, locked=True)
        if getattr(args, "planfile", None):
            plan = _saved_plan(Path(args.planfile), desired, observed)
        else:
            from reconciler.app.challenges import annotate

            plan = annotate(desired, observed, make_plan(desired, observed, _now(), forced))
        sys.stdout.write(render.text(plan))
        code = EXIT_OK
        if plan.changes:
            sys.stdout.flush()
            code = _execute(args, world, plan)
        from reconciler.app.fleet import is_fleet

        if is_fleet(world.state):
            code = _follow_fleet(args, world, forced, code)
        return code


FOLLOW_ROUNDS = 10  # apply waits for, then installs, at most this many rounds of other nodes' issuances
FOLLOW_WAIT = 1800.0  # seconds apply waits for another node's issuance (its lease expires long before)


def _follow_fleet(args: argparse.Namespace, world: Any, forced: frozenset[str], code: int) -> int:
    """Fleet: wait for the issuances other nodes hold, install what they issued, then report this node."""
    from reconciler.app.fleet import report_pass, wait_for_others, waiting_for

    waited = False
    for _ in range(FOLLOW_ROUNDS):
        now = _now()
        observed = _observe(world, now, locked=True)
        plan = make_plan(world.desired, observed, now)
        waiting = waiting_for(plan)
        if waiting:
            for note in plan.notes:
                if note.certificate in waiting:
                    sys.stdout.write(f"Waiting: {note.certificate}: {note.message}\n")
            sys.stdout.flush()
            if not wait_for_others(world.state, waiting, FOLLOW_WAIT):
                sys.stderr.write(f"certctl: still issuing elsewhere after {FOLLOW_WAIT:g}s: {', '.join(waiting)}\n")
                code = EXIT_ERROR
                break
            waited = True
            continue
        if plan.changes and waited:
            sys.stdout.write("\n" + render.text(plan))
            sys.stdout.flush()
            code = max(code, _execute(args, world, plan))
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
        raise UsageError(f"stale plan: the desired state in {desired.directory} changed since {path} was made; "
                       "run certctl plan again")
    if saved.get("observed") != observed.fingerprint():
        raise UsageError(f"stale plan: what certctl observes (stores, hosts, task outputs, state) changed since {path} "
                       "was made; run certctl plan again")
    return Plan(
        at=datetime.fromisoformat(data["at"].replace("Z", "+00:00")),
        directory=data["source"]["dir"],
        revision=data["source"]["revision"],
        actions=tuple(action_from_json(a) for a in data["actions"]),
        certificates=(),
        observed_fingerprint=saved.get("observed", ""),
        desired_fingerprint=saved.get("desired", ""),
    )


def _execute(args: argparse.Namespace, world: Any, plan: Plan) -> int:
    from reconciler.app.executor import Outcome
    from reconciler.app.reconcile import apply_plan

    progress = sys.stdout.isatty() and args.log_format != "json"

    def show(outcome: Outcome) -> None:
        if progress:
            mark = {"done": "ok", "failed": "FAILED", "skipped": "skipped"}[outcome.status]
            extra = f": {outcome.error}" if outcome.error else ""
            sys.stdout.write(f"  {mark:<7} {outcome.action.id} ({outcome.seconds:.1f}s){extra}\n")
            sys.stdout.flush()

    result = apply_plan(world, plan, clock=SYSTEM, on_outcome=show)
    failed = [o for o in result.outcomes if o.status != "done"]
    if failed or result.verify_failures:
        sys.stdout.write("\nNot done:\n")
        for o in failed:
            sys.stdout.write(f"  {o.status}: {o.action.id}: {o.error}\n")
        for v in result.verify_failures:
            sys.stdout.write(f"  failed: {v}\n")
    sys.stdout.write(
        f"\nApply complete: {result.count('done')} done, {result.count('failed')} failed, "
        f"{result.count('skipped')} skipped" + (f", {len(result.verify_failures)} verification(s) failed" if result.verify_failures else "")
        + ".\n"
    )
    return EXIT_OK if result.ok else EXIT_ERROR


def cmd_renew(args: argparse.Namespace) -> int:
    desired = _load(args)
    if args.name not in desired.certificates:
        raise UsageError(f"no Certificate named {args.name!r} (known: {', '.join(sorted(desired.certificates)) or 'none'})")
    args.planfile = None
    return cmd_apply(args, forced=frozenset({args.name}))


def cmd_status(args: argparse.Namespace) -> int:
    desired = _load(args)
    world = _world(args, desired)
    if args.fleet:
        from reconciler.app.fleet import fleet_status, is_fleet

        if not is_fleet(world.state):
            raise UsageError("status --fleet needs a shared backend: Settings.backend.postgres")
        doc = fleet_status(world.state)
        sys.stdout.write(json.dumps(doc, indent=2) + "\n" if args.json else render.fleet_text(doc))
        return EXIT_OK
    now = _now()
    rows = status_rows(desired, _observe(world, now), now)
    applied = world.state.applied()
    if args.json:
        sys.stdout.write(json.dumps(status_document(desired, rows, applied, now), indent=2) + "\n")
    else:
        sys.stdout.write(render.status_text(rows))
        if applied:
            revision = applied.get("revision") or "none (not a git repository)"
            failures = "" if applied.get("ok") else ", with failures"
            sys.stdout.write(f"\nLast apply: {applied.get('at')}, revision {revision}{failures}.\n")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from reconciler.app.schema import write_schemas

    written = write_schemas(Path(args.out))
    for path in written:
        print(path)
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace) -> int:
    from reconciler.entry.daemon import DaemonOptions, run_daemon

    return run_daemon(DaemonOptions(
        directory=_dir(args), state_dir=args.state_dir, git_pull=args.git_pull, metrics_address=args.metrics_address,
        no_metrics=args.no_metrics, stop_grace=DaemonOptions.stop_grace_from_env(), node=args.node,
    ))


def cmd_backend_migrate(args: argparse.Namespace) -> int:
    from reconciler.app.fleet import is_fleet
    from reconciler.state.postgres import migrate

    desired = _load(args)
    state = _state(args, desired)
    if not is_fleet(state):
        raise UsageError("no backend to migrate: Settings.backend.postgres is not set (the state dir needs no migration)")
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
    print(f"Imported from {source_path}: {counts['versions']} version(s) ({counts['already']} already there), "
          f"{counts['attempts']} attempt record(s), {counts['blobs']} CA/account file(s)"
          + (f"; {counts['kept']} kept as the database had them" if counts["kept"] else "") + ".")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from reconciler.app.importer import ImportOptions, run_import

    desired = _load(args)
    opts = ImportOptions(directory=_dir(args), iis_host=args.iis_host, issuer=args.issuer,
                         out=Path(args.out) if args.out else None)
    return run_import(opts, _world(args, desired))


# --- parser ----------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-d", "--dir", help="desired-state directory (default: ./desired-state or $CERTCTL_DIR)")
    common.add_argument("--state-dir", help="state directory (overrides Settings.stateDir)")
    common.add_argument("--node", default=os.environ.get("CERTCTL_NODE"),
                        help="this node's name in a fleet (default: $CERTCTL_NODE, else the host name)")
    common.add_argument("--log-format", choices=["console", "json"], default=os.environ.get("CERTCTL_LOG_FORMAT", "console"))
    common.add_argument("--log-level", default=os.environ.get("CERTCTL_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    p = argparse.ArgumentParser(prog="certctl", description="Declarative TLS certificates: plan, then apply.")
    p.add_argument("--version", action="version", version=f"certctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate", parents=[common], help="load and check the specs")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("plan", parents=[common], help="show what apply would do; change nothing")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the machine format")
    fmt.add_argument("--markdown", action="store_true", help="for a pull-request comment")
    s.add_argument("--out", help="also save the plan (JSON) to FILE, for `certctl apply FILE`")
    s.add_argument("--at", help="plan as of another time: 2027-01-15, 2027-01-15T08:00:00Z or +30d")
    s.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when there are changes, 0 when none")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("apply", parents=[common], help="plan and carry it out")
    s.add_argument("planfile", nargs="?", help="a plan saved by `certctl plan --out`; refused if stale")
    s.add_argument("--lock-timeout", type=float, default=10.0, help="seconds to wait for another certctl (default 10)")
    s.set_defaults(fn=cmd_apply)

    s = sub.add_parser("status", parents=[common], help="every certificate: state, expiry, renewal, last error")
    s.add_argument("--json", action="store_true")
    s.add_argument("--fleet", action="store_true", help="every node of the fleet, and which versions they serve")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("renew", parents=[common], help="force a renewal now (overrides backoff)")
    s.add_argument("name")
    s.add_argument("--lock-timeout", type=float, default=10.0)
    s.set_defaults(fn=cmd_renew)

    s = sub.add_parser("daemon", parents=[common], help="reconcile continuously")
    s.add_argument("--git-pull", action="store_true", help="fast-forward the desired-state repository each interval")
    s.add_argument("--metrics-address", help="host:port for /healthz, /metrics, /status (default 127.0.0.1:9464)")
    s.add_argument("--no-metrics", action="store_true", help="serve no HTTP endpoint")
    s.set_defaults(fn=cmd_daemon)

    s = sub.add_parser("schema", parents=[common], help="write the JSON Schemas of every kind")
    s.add_argument("--out", default="schemas", help="folder (default: schemas/)")
    s.set_defaults(fn=cmd_schema)

    s = sub.add_parser("backend", help="the shared state backend (Settings.backend.postgres)")
    backend = s.add_subparsers(dest="backend_command", required=True, metavar="SUBCOMMAND")
    b = backend.add_parser("migrate", parents=[common], help="create or upgrade the database schema")
    b.set_defaults(fn=cmd_backend_migrate)
    b = backend.add_parser("import", parents=[common], help="copy a state dir (CAs, accounts, versions, keys, attempts) in")
    b.add_argument("--from", dest="source", help="the state dir to copy (default: this node's)")
    b.add_argument("--lock-timeout", type=float, default=10.0)
    b.set_defaults(fn=cmd_backend_import)

    s = sub.add_parser("import", parents=[common], help="write Certificate specs for what an IIS host serves today")
    s.add_argument("--iis-host", required=True, help="the IisHost to read")
    s.add_argument("--issuer", help="Issuer for the new specs (default: the only one, or the first)")
    s.add_argument("--out", help="file to write (default: <dir>/imported-<host>.yaml)")
    s.set_defaults(fn=cmd_import)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure(args.log_format, args.log_level)
    try:
        return int(args.fn(args))
    except InvalidDesiredState as exc:
        for d in exc.diagnostics:
            sys.stderr.write(f"{d}\n")
        sys.stderr.write(f"certctl: {len(exc.diagnostics)} problem(s) found; nothing was changed.\n")
        return EXIT_ERROR
    except (UsageError, LockBusy) as exc:
        sys.stderr.write(f"certctl: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("certctl: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # e.g. a full disk under the state dir before any action started
        sys.stderr.write(f"certctl: {exc}\n")
        return EXIT_ERROR
    except ValueError as exc:  # e.g. a bad --at
        sys.stderr.write(f"certctl: {exc}\n")
        return EXIT_ERROR
