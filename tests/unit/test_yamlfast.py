"""The fast loader must agree with ruamel's safe loader on everything desired-state files can hold."""

from __future__ import annotations

import io
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from reconciler.support import yamlfast

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=True),
    st.text(max_size=30),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=10), children, max_size=4)
    ),
    max_leaves=25,
)


def dump(value: object, flow: bool | None) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = flow
    buf = io.StringIO()
    yaml.dump_all([value, {"second": value}], buf)
    return buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(values, st.sampled_from([None, True, False]))
def test_agrees_with_ruamel(value: object, flow: bool | None) -> None:
    text = dump(value, flow)
    try:
        expected = list(
            YAML(typ="safe", pure=False).load_all(text)
        )  # same C parser: compares the constructors
    except YAMLError:  # ruamel's emitter occasionally writes what its own parser rejects: reject it too
        with pytest.raises(YAMLError):
            yamlfast.load_all(text)
        return
    assert yamlfast.load_all(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a: 1\nb: 0x1f\nc: 0o17\nd: 1.5e3\ne: ~\nf: yes\ng: TRUE\nh: '1'\ni: !!str 5\nj: null\nk:\n",
            {
                "a": 1,
                "b": 31,
                "c": 15,
                "d": 1500.0,
                "e": None,
                "f": "yes",
                "g": True,
                "h": "1",
                "i": "5",
                "j": None,
                "k": None,
            },
        ),
        ("x: &base {p: 1, q: 2}\ny:\n  <<: *base\n  q: 3\n", {"x": {"p": 1, "q": 2}, "y": {"p": 1, "q": 3}}),
        ("- *.example.com\n", None),
    ],
)
def test_examples(text: str, expected: object) -> None:
    if expected is None:
        with pytest.raises(YAMLError):
            yamlfast.load_all(text)
    else:
        assert yamlfast.load_all(text) == [expected]


def test_special_floats() -> None:
    [doc] = yamlfast.load_all("a: .inf\nb: -.Inf\nc: .nan\n")
    assert doc["a"] == math.inf and doc["b"] == -math.inf and math.isnan(doc["c"])


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a'", 2),
        ("a: !custom x\n", "unsupported tag !custom", 1),
        ("a: [1, 2\nb: 3\n", "", 2),
        ("<<: 5\n", "a merge key (<<) takes a mapping", 1),
    ],
)
def test_errors_carry_their_position(text: str, message: str, line: int) -> None:
    with pytest.raises(YAMLError) as info:
        yamlfast.load_all(text)
    assert message in str(info.value)
    assert info.value.problem_mark.line + 1 == line  # type: ignore[attr-defined]


def test_the_parse_cache_is_stamped_with_the_model_sources_that_exist() -> None:
    """An edited spec model must never reuse a cache the old code wrote: the stamp follows files that exist."""
    from reconciler.state.cache import STAMPED_SOURCES

    assert STAMPED_SOURCES and all(path.is_file() for path in STAMPED_SOURCES)
