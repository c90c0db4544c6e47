"""Domain-name rules: normalisation, syntax, wildcards, public-name checks, host matching."""

from __future__ import annotations

import ipaddress
import re

import idna

MAX_NAME = 253
MAX_LABEL = 63
_LDH = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
# A name that is already what normalize makes of it: lower-case letter-digit-hyphen labels of at most 63
# characters, a wildcard only as a whole first label with a label after it, and no punycode (which must be
# decoded to be checked). Most names are: they take this one match instead of a loop over their labels.
_NORMAL = re.compile(
    r"(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)

# Suffixes no public CA can validate (RFC 6761, RFC 6762, RFC 8375, ICANN's .internal, common LAN habits).
RESERVED_SUFFIXES = (
    "local",
    "localhost",
    "internal",
    "lan",
    "home",
    "corp",
    "intranet",
    "private",
    "home.arpa",
    "test",
    "example",
    "invalid",
    "localdomain",
    "onion",
    "alt",
)


def normalize(name: str) -> str:
    """Lower-case and IDNA-encode a domain name; raise ValueError naming what is wrong."""
    if not isinstance(name, str):
        raise ValueError("a domain name must be a string")
    if len(name) <= MAX_NAME and "xn--" not in name and _NORMAL.fullmatch(name):
        return name
    raw = name.strip()
    if raw != name or " " in raw or "\t" in raw:
        raise ValueError(f"{name!r} contains white space")
    if not raw:
        raise ValueError("a domain name must not be empty")
    if raw.endswith("."):
        raise ValueError(f"{name!r} ends with a dot; write it without the trailing dot")
    labels = raw.lower().split(".")
    out: list[str] = []
    for index, label in enumerate(labels):
        if label == "":
            raise ValueError(f"{name!r} has an empty label")
        if label == "*":
            if index != 0:
                raise ValueError(
                    f"{name!r}: a wildcard may only be the whole leftmost label (like *.example.com)"
                )
            out.append(label)
            continue
        if "*" in label:
            raise ValueError(
                f"{name!r}: a wildcard may only be the whole leftmost label (like *.example.com)"
            )
        if not label.isascii():
            try:
                label = idna.encode(label, uts46=True).decode("ascii")
            except idna.IDNAError as exc:
                raise ValueError(
                    f"{name!r}: label {label!r} is not a valid internationalised name ({exc})"
                ) from None
        elif label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise ValueError(f"{name!r}: label {label!r} is not valid punycode ({exc})") from None
        if len(label) > MAX_LABEL:
            raise ValueError(
                f"{name!r}: label {label[:20]}… is {len(label)} characters; at most {MAX_LABEL} are allowed"
            )
        if label.startswith("-") or label.endswith("-"):
            raise ValueError(f"{name!r}: label {label!r} starts or ends with a hyphen")
        if not _LDH.match(label):
            raise ValueError(f"{name!r}: label {label!r} may contain only letters, digits and hyphens")
        out.append(label)
    if len(out) == 1 and out[0] == "*":
        raise ValueError(f"{name!r}: a wildcard needs a domain below it (like *.example.com)")
    result = ".".join(out)
    if len(result) > MAX_NAME:
        raise ValueError(
            f"{name[:30]}… is {len(result)} characters; a domain name may have at most {MAX_NAME}"
        )
    return result


def is_wildcard(name: str) -> bool:
    return name.startswith("*.")


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def public_name_problem(name: str) -> str | None:
    """Why a public ACME CA can never validate this name, or None."""
    if is_ip(name):
        return f"{name} is an IP address; a public ACME CA issues only for public DNS names"
    base = name[2:] if is_wildcard(name) else name
    if "." not in base:
        return f"{name} is a single-label (intranet) name; a public ACME CA cannot validate it"
    for suffix in RESERVED_SUFFIXES:
        if base == suffix or base.endswith("." + suffix):
            return f"{name} ends in the reserved suffix .{suffix}; a public ACME CA cannot validate it"
    return None


def covers(cert_name: str, host: str) -> bool:
    """Does a certificate name cover a host name (RFC 6125: a wildcard matches exactly one label)?"""
    host = host.lower()
    if cert_name == host:
        return True
    if is_wildcard(cert_name) and not is_wildcard(host):
        suffix = cert_name[1:]
        head, dot, rest = host.partition(".")
        return bool(dot) and bool(head) and "." + rest == suffix
    return False


def match_precision(cert_names: tuple[str, ...] | list[str], host: str) -> int:
    """2 for an exact match, 1 for a one-label wildcard match, 0 for none."""
    host = host.lower()
    if host in cert_names:
        return 2
    return 1 if any(covers(n, host) for n in cert_names if is_wildcard(n)) else 0


def redundant_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(wildcard, name) pairs where the wildcard already covers the name in the same certificate."""
    return [(w, n) for w in names if is_wildcard(w) for n in names if n != w and covers(w, n)]
