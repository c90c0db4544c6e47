from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.core import domains


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("WWW.Example.COM", "www.example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("*.Example.com", "*.example.com"),
    ],
)
def test_normalize(raw: str, normal: str) -> None:
    assert domains.normalize(raw) == normal


@pytest.mark.parametrize(
    ("host", "covered_by_wildcard"),
    [("a.example.com", True), ("example.com", False), ("b.a.example.com", False), ("aexample.com", False)],
)
def test_wildcard_covers_exactly_one_label(host: str, covered_by_wildcard: bool) -> None:
    assert domains.covers("*.example.com", host) is covered_by_wildcard


def test_binding_wildcard_host_is_covered_only_by_the_same_wildcard() -> None:
    assert domains.covers("*.apps.example.org", "*.apps.example.org")
    assert not domains.covers("*.example.org", "*.apps.example.org")


def test_exact_match_beats_wildcard() -> None:
    assert domains.match_precision(("www.example.com",), "www.example.com") == 2
    assert domains.match_precision(("*.example.com",), "www.example.com") == 1
    assert domains.match_precision(("*.example.com",), "example.com") == 0


@pytest.mark.parametrize(
    "name",
    [
        "srvdevapp01",
        "localhost",
        "a.local",
        "*.corp.local",
        "x.internal",
        "nas.home.arpa",
        "192.0.2.1",
        "2001:db8::1",
        "db.lan",
    ],
)
def test_names_a_public_ca_cannot_validate(name: str) -> None:
    assert domains.public_name_problem(name)


@pytest.mark.parametrize("name", ["www.example.com", "*.example.com", "xn--bcher-kva.de", "localization.com"])
def test_public_names(name: str) -> None:
    assert domains.public_name_problem(name) is None


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20)


@given(st.lists(label, min_size=2, max_size=5))
def test_normalize_is_idempotent(labels: list[str]) -> None:
    name = ".".join(labels)
    assert domains.normalize(domains.normalize(name)) == domains.normalize(name) == name


@given(label, st.lists(label, min_size=1, max_size=3), label)
def test_wildcard_never_covers_two_labels(first: str, rest: list[str], extra: str) -> None:
    base = ".".join(rest)
    assert domains.covers(f"*.{base}", f"{first}.{base}")
    assert not domains.covers(f"*.{base}", f"{extra}.{first}.{base}")
    assert not domains.covers(f"*.{base}", base)


@given(
    st.one_of(
        st.text(alphabet="ab9-.*xnA\u00e9 \t", min_size=0, max_size=14),
        st.builds(
            lambda n, tail: "a" * n + "." + tail, st.integers(58, 70), st.text(alphabet="ab.-*", max_size=6)
        ),
    )
)
def test_the_quick_path_for_names_already_normal_agrees_with_the_full_rules(name: str) -> None:
    def outcome() -> str:
        try:
            return domains.normalize(name)
        except ValueError as exc:
            return f"error: {exc}"

    quick = outcome()
    saved = domains._NORMAL
    domains._NORMAL = re.compile("(?!)")  # never matches: every name takes the full rules
    try:
        assert outcome() == quick
    finally:
        domains._NORMAL = saved
