"""Plan and status as text for humans and Markdown for pull requests, rendered from the same data as --json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler.core.durations import iso
from reconciler.core.plan import ACTION_ORDER, ActionKind, Plan
from reconciler.core.status import StatusRow

_SYMBOL = {
    ActionKind.issue: "+",
    ActionKind.renew: "~",
    ActionKind.reissue: "~",
    ActionKind.install: "+",
    ActionKind.bind: "+",
    ActionKind.rebind: "~",
    ActionKind.deploy: "~",
    ActionKind.cleanup: "-",
    ActionKind.unbind: "-",
}

_VERB = {
    "issue": "to issue",
    "renew": "to renew",
    "reissue": "to reissue",
    "install": "to install",
    "bind": "to bind",
    "rebind": "to rebind",
    "deploy": "to deploy",
    "cleanup": "to clean up",
    "unbind": "to unbind",
}


def summary_line(plan: Plan) -> str:
    pending = _pending_clause(plan)
    if not plan.changes:
        return f"No changes now, but {pending}." if pending else "No changes. Everything is up to date."
    counts = plan.summary()
    return (
        "Plan: "
        + ", ".join(f"{counts[k.value]} {_VERB[k.value]}" for k in ACTION_ORDER)
        + (f"; {pending}" if pending else "")
        + "."
    )


def _names(items: Sequence[str], limit: int = 5) -> str:
    shown = list(items[:limit])
    return ", ".join(shown) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _pending_clause(plan: Plan) -> str:
    """Deferred and failing certificates, with when they are retried and the command that retries now."""
    parts: list[str] = []
    if plan.deferred:
        names = [c.name for c in plan.deferred]
        count = len(names)
        parts.append(
            f"{count} certificate{'s' if count != 1 else ''} deferred ("
            + _names([f"{c.name} until {iso(c.deferred_until)}" for c in plan.deferred])
            + f"; `certctl renew {' '.join(names) if count <= 5 else '--all'}` retries now)"
        )
    if plan.failing:
        names = [c.name for c in plan.failing]
        count = len(names)
        parts.append(
            f"{count} certificate{'s' if count != 1 else ''} failing (last issuance failed: {_names(names)})"
        )
    return " and ".join(parts)


def describe_target(action_json: dict[str, Any]) -> str:
    """The action's target, with binding details (host, site, binding, old -> new thumbprint) when it has them."""
    detail = action_json.get("detail", {})
    target = str(action_json["target"])
    if "binding" in detail:
        binding = f"{detail.get('protocol', 'https')} {detail['binding']}"
        flags = int(detail.get("ssl_flags", 0))
        binding += (
            " (SNI)" if flags & 1 else " (no SNI)" if detail.get("protocol", "https") == "https" else ""
        )
        old = detail.get("old_thumbprint")
        new = detail.get("thumbprint") or "(new)"
        arrow = f"{str(old)[:8]} -> {str(new)[:8]}" if old else f"certificate {str(new)[:8]}"
        if action_json["kind"] == "unbind":
            arrow = f"{str(old)[:8] if old else ''} -> removed"
        return f"host {detail.get('host')}, site {detail.get('site')!s}: {binding}, {arrow}"
    return target


def _shown(plan: Plan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The actions and notes as in the JSON plan (only these: a plan of 10,000 certificates renders fast)."""
    return [a.to_json() for a in plan.actions], [n.to_json() for n in plan.notes]


# A line of human output is a tuple of (text, style) segments: the plain text joins them, a terminal colours
# them (reconciler/entry/console.py maps the style names to colours). Styles: "" plain, "create", "update",
# "delete", "note", "heading", "error", "ok", "dim".
Segment = tuple[str, str]
Line = tuple[Segment, ...]

_STYLE = {"+": "create", "~": "update", "-": "delete"}


def plain(lines: Sequence[Line]) -> str:
    return "".join("".join(text for text, _ in line) + "\n" for line in lines)


def text(plan: Plan) -> str:
    return plain(text_lines(plan))


def text_lines(plan: Plan) -> list[Line]:
    actions_json, notes = _shown(plan)
    lines: list[Line] = []
    by_cert: dict[str, list[dict[str, Any]]] = {}
    for action in actions_json:
        by_cert.setdefault(action["certificate"], []).append(action)
    for name, actions in by_cert.items():
        lines.append(((f"certificate {name}:", "heading"),))
        for a in actions:
            symbol = _SYMBOL[ActionKind(a["kind"])]
            lines.append(
                (("  ", ""), (f"{symbol} {a['kind']:<8}", _STYLE[symbol]), (f" {describe_target(a)}", ""))
            )
            lines.append(((f"             because {a['reason']}", "dim"),))
    if notes:
        if lines:
            lines.append(())
        lines.append((("Left alone (reported, not changed):", "heading"),))
        for n in notes:
            who = f"{n['certificate']}: " if n["certificate"] else ""
            lines.append((("  ", ""), ("!", "note"), (f" {who}{n['target']}: {n['message']}", "")))
    if lines:
        lines.append(())
    lines.append(((summary_line(plan), "heading" if plan.pending else "ok"),))
    return lines


def markdown(plan: Plan) -> str:
    actions_json, notes = _shown(plan)
    out = ["### certctl plan", ""]
    rev = plan.revision
    out.append(f"As of `{iso(plan.at)}` for `{plan.directory}`" + (f" at `{rev[:12]}`" if rev else "") + ".")
    out.append("")
    if actions_json:
        out += ["| certificate | action | target | reason |", "|---|---|---|---|"]
        for a in actions_json:
            out.append(
                f"| `{a['certificate']}` | **{a['kind']}** | {_md(describe_target(a))} | {_md(a['reason'])} |"
            )
        out.append("")
    if notes:
        out += ["<details><summary>Left alone (reported, not changed)</summary>", ""]
        for n in notes:
            out.append(f"- `{n['target']}`: {_md(n['message'])}")
        out += ["", "</details>", ""]
    out.append(f"**{summary_line(plan)}**")
    return "\n".join(out) + "\n"


def _md(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def status_text(rows: Sequence[StatusRow]) -> str:
    if not rows:
        return "No certificates are defined.\n"
    header = ("CERTIFICATE", "STATE", "EXPIRES", "RENEWS", "THUMBPRINT", "LAST ERROR")
    table = [header] + [
        (
            r.name,
            r.state.value,
            iso(r.not_after) or "-",
            iso(r.renew_at) or "-",
            (r.thumbprint or "-")[:16],
            (r.last_error or "-")[:80],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines += [f"{r.name}: issued by {r.issuer} ({r.issuer_note})" for r in rows if r.issuer and r.issuer_note]
    lines += [
        f"{r.name}: {r.action_failures} apply(s) in a row failed: {r.action_error}"
        for r in rows
        if r.action_failures
    ]
    return "\n".join(lines) + "\n"


_STATE_STYLE = {
    "ready": "ok",
    "pending": "update",
    "missing": "update",
    "due": "update",
    "outdated": "update",
    "deferred": "warning",
    "expired": "error",
}


def describe_lines(d: dict[str, Any]) -> list[Line]:
    """`certctl status NAME` / `certctl describe NAME`: one certificate in full (``core.describe.describe``)."""

    def row(label: str, value: object, style: str = "") -> Line:
        return ((f"  {label:<15}", "dim"), (str(value if value not in (None, "") else "-"), style))

    lines: list[Line] = [((f"certificate {d['name']}", "heading"), (f"  ({d['file']})", "dim"))]
    lines.append(
        row(
            "state",
            d["state"] + (f": {d['reason']}" if d["reason"] else ""),
            _STATE_STYLE.get(d["state"], ""),
        )
    )
    lines.append(row("domains", ", ".join(d["domains"])))
    issuer = d["issuer"]
    lines.append(
        row(
            "issuer",
            f"{issuer['name']} ({issuer['kind']}"
            + (f", {issuer['directory']})" if issuer["directory"] else ")")
            + (
                f"; then {', '.join(issuer['fallbacks'])} if it cannot serve"
                if issuer.get("fallbacks")
                else ""
            ),
        )
    )
    lines.append(row("key", d["key"]["algorithm"] + (" (reused on renewal)" if d["key"]["reuse"] else "")))
    lines.append(row("renewal", d["renewal"]))
    lines.append(row("thumbprint", d["thumbprint"]))
    lines.append(row("valid", f"{d['not_before']} -> {d['not_after']}" if d["not_after"] else None))
    left = d["days_left"]
    lines.append(row("days left", left, "error" if left is not None and left <= 0 else ""))
    lines.append(row("renews at", d["renew_at"]))
    lines.append(row("next attempt", d["next_attempt"]))
    lines.append(
        row(
            "failures",
            f"{d['consecutive_failures']} in a row" if d["consecutive_failures"] else 0,
            "error" if d["consecutive_failures"] else "",
        )
    )
    lines.append(row("last attempt", d["last_attempt"]))
    lines.append(row("last success", d["last_success"]))
    if d["last_error"]:
        lines.append((("  last error", "dim"),))
        lines.extend(((f"    {text}", "error"),) for text in str(d["last_error"]).splitlines())
    lines.append((("  stores", "dim"),) if d["stores"] else row("stores", None))
    for st in d["stores"]:
        lines.append(
            (
                (f"    {st['name']}: {st['where']}: ", ""),
                (st["holds"], "ok" if st["holds"] == "current" else "warning"),
            )
        )
    lines.append((("  iis", "dim"),) if d["bindings"] else row("iis", None))
    for b in d["bindings"]:
        mode = b["mode"] + (f" (site {b['site']})" if b["site"] else "")
        lines.append(
            ((f"    host {b['host']}, mode {mode}" + ("" if b["reachable"] else ": cannot be read"), ""),)
        )
        for s in b["serving"]:
            lines.append(((f"      serves it: site {s['site']}, {s['binding']}", ""),))
        if b["reachable"] and not b["serving"]:
            lines.append((("      no binding serves the current certificate", "warning"),))
    lines.append((("  tasks", "dim"),) if d["tasks"] else row("tasks", None))
    for t in d["tasks"]:
        run = t["last_run"]
        last = (
            f"last run {run['at']}: {run['result']}" + (f": {run['error']}" if run.get("error") else "")
            if run
            else "no run recorded"
        )
        deployed = t["deployed"][:8] if t["deployed"] else (t["problem"] or "nothing deployed")
        lines.append(
            (
                (f"    [{t['index']}] {t['kind']} {t['target']}: holds {deployed}; ", ""),
                (last, "error" if run and run["result"] != "done" else ""),
            )
        )
    for v in d["verify"]:
        lines.append(row("verify", v["endpoint"] + (f" (SNI {v['sni']})" if v["sni"] else "")))
    if d["pending_actions"]:
        lines.append((("  pending", "dim"),))
        lines.extend(((f"    {a['id']}: ", "update"), (a["reason"], "")) for a in d["pending_actions"])
    for note in d["notes"]:
        lines.append((("  ! ", "note"), (note, "")))
    return lines


def check_lines(code: int, problems: Sequence[tuple[int, str]], count: int) -> list[Line]:
    """`certctl status --check`: a Nagios status line, then one line per problem."""
    from reconciler.core.describe import SEVERITY

    style = {0: "ok", 1: "warning", 2: "error", 3: "error"}
    if not problems:
        ok: Line = ((f"CERTCTL OK - {count} certificate(s) fine", "ok"),)
        return [ok]
    head = f"CERTCTL {SEVERITY[code]} - " + ", ".join(
        f"{sum(1 for s, _ in problems if s == level)} {SEVERITY[level].lower()}"
        for level in (2, 1)
        if any(s == level for s, _ in problems)
    )
    first: Line = ((head, style[code]),)
    return [first] + [((f"{SEVERITY[s]}: {text}", style[s]),) for s, text in problems]


def fleet_text(doc: dict[str, Any]) -> str:
    """`certctl status --fleet`: the nodes, then which nodes serve which version of each certificate."""
    if not doc["nodes"]:
        return "No node has reported to this database yet.\n"
    header = ("NODE", "LAST SEEN", "LAST APPLY", "REVISION", "CONVERGED")
    table = [header] + [
        (
            n["node"] + (" (stale)" if n["stale"] else ""),
            n["last_seen"] or "-",
            ((n["last_apply"] or {}).get("at") or "-")
            + ("" if (n["last_apply"] or {}).get("ok", True) else " (failed)"),
            (n["revision"] or "-")[:12],
            "yes"
            if n["converged"]
            else ("no, waiting for " + ", ".join(n["waiting_for"]) if n["waiting_for"] else "no"),
        )
        for n in doc["nodes"]
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.append("")
    for cert in doc["certificates"]:
        parts = [
            f"{(s['thumbprint'] or 'nothing')[:16]}{'' if s['current'] else ' (old)'} on {', '.join(s['nodes'])}"
            for s in cert["serving"]
        ]
        lines.append(f"{cert['name']}: " + "; ".join(parts))
    stale = [n["node"] for n in doc["nodes"] if n["stale"]]
    if stale:
        lines.append("")
        lines.append(f"Stale (silent for more than 3 x reconcileInterval): {', '.join(stale)}")
    return "\n".join(lines) + "\n"


__all__ = [
    "check_lines",
    "describe_lines",
    "fleet_text",
    "iso",
    "markdown",
    "status_text",
    "summary_line",
    "text",
]
