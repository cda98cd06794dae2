"""The strict YAML reading: what the guard accepts is read as go-yaml reads it, and the rest is refused.

Pure unit tests of :mod:`gateway.policy.strict_yaml`; ``test_differential.py`` checks the readings
against Compose itself.
"""

from __future__ import annotations

import time

import pytest

from gateway.policy.strict_yaml import Budget, Number, Tagged, TaggedMapping, YamlRefused, load_documents

BUDGET = Budget()


def read(text: str, budget: Budget = BUDGET) -> list[object]:
    return load_documents(text, budget)[0]


def refused(text: str, budget: Budget = BUDGET) -> YamlRefused:
    with pytest.raises(YamlRefused) as caught:
        load_documents(text, budget)
    return caught.value


def test_plain_scalars_resolve_as_go_yaml_reads_them_into_an_interface() -> None:
    (doc,) = read("a: [x, 'y', 0x10, 010, 1_000, .5, .inf, yes, on, true, False, ~, null, '', 2024-01-01, 1.2.3]\n")
    assert isinstance(doc, dict)
    values = doc["a"]
    assert values[:2] == ["x", "y"]
    assert all(isinstance(v, Number) for v in values[2:7])
    # YAML 1.1's yes/on stay strings in go-yaml v3, as do timestamps and dotted versions.
    assert values[7:9] == ["yes", "on"] and all(type(v) is str for v in values[7:9])
    assert values[9:13] == [True, False, None, None]
    assert values[13:] == ["", "2024-01-01", "1.2.3"] and all(type(v) is str for v in values[13:])


def test_quoted_scalars_are_always_strings() -> None:
    (doc,) = read("a: ['0x10', \"true\", 'null', \"~\"]\n")
    assert doc == {"a": ["0x10", "true", "null", "~"]}
    assert all(type(v) is str for v in doc["a"])


def test_merge_keys_follow_go_yaml_explicit_keys_win_then_the_first_source() -> None:
    (doc,) = read(
        "a: &a {k: 1, j: 1}\nb: &b {k: 2, m: 2, j: 2}\nc:\n  k: own\n  <<: [*a, *b]\nd:\n  <<: *b\n  m: own\n"
    )
    assert doc["c"] == {"k": "own", "j": "1", "m": "2"}  # type: ignore[index]
    assert doc["d"] == {"k": "2", "j": "2", "m": "own"}  # type: ignore[index]


def test_a_quoted_merge_key_is_an_ordinary_key_and_clashes_with_the_plain_one() -> None:
    (doc,) = read("a:\n  '<<': x\n")
    assert doc == {"a": {"<<": "x"}}
    assert refused("a:\n  <<: {b: 1}\n  '<<': x\n").code == "duplicate_key"


def test_every_document_of_a_stream_is_read_as_compose_reads_them_all() -> None:
    assert read("a: 1\n---\nb: 2\n---\n") == [{"a": "1"}, {"b": "2"}, None]


def test_compose_merge_tags_and_core_tags_are_read_and_marked() -> None:
    (doc,) = read("a: !reset null\nb: !override {x: 1}\nc: !!str 5\nd: !!map {y: 2}\n")
    assert isinstance(doc, dict)
    assert isinstance(doc["a"], Tagged) and doc["a"].tag == "!reset"
    assert isinstance(doc["b"], TaggedMapping) and doc["b"] == {"x": "1"}
    assert isinstance(doc["c"], Tagged) and doc["c"] == "5" and doc["c"].tag == "tag:yaml.org,2002:str"
    assert isinstance(doc["d"], TaggedMapping)
    # A tagged sequence is still a sequence: the keys after it are read as keys.
    assert read("a: !reset [x, y]\nb: 1\n") == [{"a": ["x", "y"], "b": "1"}]


@pytest.mark.parametrize(
    "text",
    [
        "a: !!binary L2V0Yy9zaGFkb3c=\n",
        "a: !!timestamp 2001-12-14\n",
        "a: !!set {x: null}\n",
        "a: !!python/object:os.system x\n",
        "a: !local x\n",
        "a: ! x\n",
        "a: !<tag:example.com,2000:path> /etc/shadow\n",
        "a: !!merge x\n",
        "!!str a: 1\n",
        "? !!binary ZW52X2ZpbGU=\n: /etc/shadow\n",
    ],
)
def test_other_tags_and_any_tag_on_a_key_are_refused(text: str) -> None:
    assert refused(text).code == "yaml_tag"


@pytest.mark.parametrize(
    "text", ["%TAG !e! tag:yaml.org,2002:\n---\na: !e!str x\n", "%YAML 1.1\n---\na: 1\n", "%TAG ! !\n---\na: 1\n"]
)
def test_directives_are_refused(text: str) -> None:
    assert refused(text).code == "yaml_directive"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("a: 1\na: 2\n", "duplicate_key"),
        ("a: 1\n'a': 2\n", "duplicate_key"),
        ('a: 1\n"\\x61": 2\n', "duplicate_key"),
        ("a:\n  <<: {b: 1}\n  <<: {c: 1}\n", "duplicate_key"),
        ("? [a]\n: 1\n", "yaml_key"),
        ("? {a: 1}\n: 1\n", "yaml_key"),
        ("x: &k a\n*k : 1\n", "yaml_key"),
        ("&k a: 1\n", "yaml_key"),
        ("0x10: a\n", "yaml_key"),
        ("true: a\n", "yaml_key"),
        ("~: a\n", "yaml_key"),
        ("a: &x 1\nb: &x 2\n", "yaml_anchor"),
        ("a: &x [*x]\n", "yaml_anchor"),
        ("a: *nowhere\n", "invalid_yaml"),
        ("a: <<\nb:\n  <<: [1, 2]\n", "invalid_yaml"),
        ("a: [unclosed\n", "invalid_yaml"),
        ("a:\n\tb: 1\n", "invalid_yaml"),
    ],
)
def test_keys_anchors_and_merges_go_yaml_could_read_otherwise_are_refused(text: str, code: str) -> None:
    assert refused(text).code == code


@pytest.mark.parametrize("text", ['a: "x\\0y"\n', 'a: ["\\0"]\n', '"a\\x01": 1\n', '"a\\u202eb": 1\n', '"a\\x7f": 1\n'])
def test_nul_anywhere_and_control_characters_in_keys_are_refused(text: str) -> None:
    error = refused(text)
    assert error.code == "control_characters" and error.line == 1


def test_control_characters_other_than_nul_are_read_in_values() -> None:
    # Multi-line commands and scripts are ordinary; the judge checks paths, names and labels on their own.
    assert read('a: "line\\nnext\\ttab"\n') == [{"a": "line\nnext\ttab"}]


def _alias_bomb(levels: int = 9, fanout: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fanout) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * fanout) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_while_reading_not_after_expanding_it() -> None:
    bomb = _alias_bomb()
    assert len(bomb) < 1024
    started = time.perf_counter()
    error = refused(bomb)
    elapsed = time.perf_counter() - started
    assert error.code == "yaml_budget" and "alias bomb" in str(error)
    # It expands to 9**9 nodes; refused on the first alias past the budget, long before that.
    assert error.line is not None and error.line <= 8
    assert elapsed < 5.0, "a kilobyte of YAML must not cost seconds"  # generous: the point is no expansion


def test_the_node_budget_spans_every_file_of_a_stack() -> None:
    budget = Budget(nodes=50)
    docs, spent = load_documents("a: [1, 2, 3]\n", budget)
    assert spent == 6
    with pytest.raises(YamlRefused) as caught:
        load_documents("b: [" + ", ".join(["x"] * 45) + "]\n", budget, spent=spent)
    assert caught.value.code == "yaml_budget"
    load_documents("b: [" + ", ".join(["x"] * 45) + "]\n", budget)


def test_nesting_deeper_than_the_budget_is_refused_at_that_depth() -> None:
    deep = "".join("  " * level + f"k{level}:\n" for level in range(100))
    error = refused(deep, Budget(depth=20))
    assert error.code == "yaml_budget" and error.line == 21
    assert read("".join("  " * level + f"k{level}:\n" for level in range(10)), Budget(depth=20))
