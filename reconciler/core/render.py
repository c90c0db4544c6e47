"""Plan and status as text for humans and Markdown for pull requests, rendered from the same data as --json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler.core.durations import iso
from reconciler.core.plan import ACTION_ORDER, ActionKind, Plan
from reconciler.core.status import StatusRow

_SYMBOL = {
    ActionKind.issue: "+", ActionKind.renew: "~", ActionKind.reissue: "~", ActionKind.install: "+",
    ActionKind.bind: "+", ActionKind.rebind: "~", ActionKind.deploy: "~", ActionKind.cleanup: "-",
    ActionKind.unbind: "-",
}

_VERB = {
    "issue": "to issue", "renew": "to renew", "reissue": "to reissue", "install": "to install", "bind": "to bind",
    "rebind": "to rebind", "deploy": "to deploy", "cleanup": "to clean up", "unbind": "to unbind",
}


def summary_line(plan: Plan) -> str:
    if not plan.changes:
        return "No changes. Everything is up to date."
    counts = plan.summary()
    return "Plan: " + ", ".join(f"{counts[k.value]} {_VERB[k.value]}" for k in ACTION_ORDER) + "."


def describe_target(action_json: dict[str, Any]) -> str:
    """The action's target, with binding details (host, site, binding, old -> new thumbprint) when it has them."""
    detail = action_json.get("detail", {})
    target = str(action_json["target"])
    if "binding" in detail:
        binding = f"{detail.get('protocol', 'https')} {detail['binding']}"
        flags = int(detail.get("ssl_flags", 0))
        binding += " (SNI)" if flags & 1 else " (no SNI)" if detail.get("protocol", "https") == "https" else ""
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


def text(plan: Plan) -> str:
    actions_json, notes = _shown(plan)
    lines: list[str] = []
    by_cert: dict[str, list[dict[str, Any]]] = {}
    for action in actions_json:
        by_cert.setdefault(action["certificate"], []).append(action)
    for name, actions in by_cert.items():
        lines.append(f"certificate {name}:")
        for a in actions:
            lines.append(f"  {_SYMBOL[ActionKind(a['kind'])]} {a['kind']:<8} {describe_target(a)}")
            lines.append(f"             because {a['reason']}")
    if notes:
        if lines:
            lines.append("")
        lines.append("Left alone (reported, not changed):")
        for n in notes:
            who = f"{n['certificate']}: " if n["certificate"] else ""
            lines.append(f"  ! {who}{n['target']}: {n['message']}")
    if lines:
        lines.append("")
    lines.append(summary_line(plan))
    return "\n".join(lines) + "\n"


def markdown(plan: Plan) -> str:
    actions_json, notes = _shown(plan)
    out = ["### certctl plan", ""]
    rev = plan.revision
    out.append(f"As of `{iso(plan.at)}` for `{plan.directory}`" + (f" at `{rev[:12]}`" if rev else "") + ".")
    out.append("")
    if actions_json:
        out += ["| certificate | action | target | reason |", "|---|---|---|---|"]
        for a in actions_json:
            out.append(f"| `{a['certificate']}` | **{a['kind']}** | {_md(describe_target(a))} | {_md(a['reason'])} |")
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
            r.name, r.state.value, iso(r.not_after) or "-", iso(r.renew_at) or "-",
            (r.thumbprint or "-")[:16], (r.last_error or "-")[:80],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table]
    return "\n".join(lines) + "\n"


def fleet_text(doc: dict[str, Any]) -> str:
    """`certctl status --fleet`: the nodes, then which nodes serve which version of each certificate."""
    if not doc["nodes"]:
        return "No node has reported to this database yet.\n"
    header = ("NODE", "LAST SEEN", "LAST APPLY", "REVISION", "CONVERGED")
    table = [header] + [
        (n["node"] + (" (stale)" if n["stale"] else ""), n["last_seen"] or "-",
         ((n["last_apply"] or {}).get("at") or "-") + ("" if (n["last_apply"] or {}).get("ok", True) else " (failed)"),
         (n["revision"] or "-")[:12],
         "yes" if n["converged"] else ("no, waiting for " + ", ".join(n["waiting_for"]) if n["waiting_for"] else "no"))
        for n in doc["nodes"]
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.append("")
    for cert in doc["certificates"]:
        parts = [f"{(s['thumbprint'] or 'nothing')[:16]}{'' if s['current'] else ' (old)'} on {', '.join(s['nodes'])}"
                 for s in cert["serving"]]
        lines.append(f"{cert['name']}: " + "; ".join(parts))
    stale = [n["node"] for n in doc["nodes"] if n["stale"]]
    if stale:
        lines.append("")
        lines.append(f"Stale (silent for more than 3 x reconcileInterval): {', '.join(stale)}")
    return "\n".join(lines) + "\n"


__all__ = ["fleet_text", "iso", "markdown", "status_text", "summary_line", "text"]
