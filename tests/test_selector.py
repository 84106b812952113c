"""Label selector grammar: unit cases, then a comparison with k8s.io/apimachinery's labels.Parse."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastobs.selector import (
    Requirement,
    SelectorError,
    parse_label_selector,
    validate_field_selector,
    validate_label_selector,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", [], id="empty"),
        pytest.param("app=web", [Requirement("app", "=", ("web",))], id="equals"),
        pytest.param("app==web", [Requirement("app", "==", ("web",))], id="double-equals"),
        pytest.param("app!=web", [Requirement("app", "!=", ("web",))], id="not-equals"),
        pytest.param("app=", [Requirement("app", "=", ("",))], id="empty-value"),
        pytest.param("tier in (b, a)", [Requirement("tier", "in", ("a", "b"))], id="in-sorted"),
        pytest.param("tier notin (a)", [Requirement("tier", "notin", ("a",))], id="notin"),
        pytest.param("x in ()", [Requirement("x", "in", ("",))], id="empty-set"),
        pytest.param("x in (a,,b,)", [Requirement("x", "in", ("", "a", "b"))], id="empty-members"),
        pytest.param("release", [Requirement("release", "exists")], id="exists"),
        pytest.param("!canary", [Requirement("canary", "!")], id="does-not-exist"),
        pytest.param("example.com/team=a", [Requirement("example.com/team", "=", ("a",))], id="prefixed-key"),
        pytest.param("n>5,m<3", [Requirement("m", "lt", ("3",)), Requirement("n", "gt", ("5",))], id="gt-lt"),
        pytest.param("in in (in, notin)", [Requirement("in", "in", ("in", "notin"))], id="keywords-as-words"),
        pytest.param(
            " a = b ,\tc ", [Requirement("a", "=", ("b",)), Requirement("c", "exists")], id="spaces"
        ),
    ],
)
def test_parse_accepts(text: str, expected: list[Requirement]) -> None:
    """Valid selectors parse into requirements sorted by key."""
    assert parse_label_selector(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("=", "found '=', expected: !, identifier, or 'end of string'", id="leading-operator"),
        pytest.param(
            "a b",
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt",
            id="missing-operator",
        ),
        pytest.param("a,", "found '', expected: identifier after ','", id="trailing-comma"),
        pytest.param("!a=b", "found '=', expected: ',' or 'end of string'", id="negated-with-value"),
        pytest.param(
            "x in (a", "unable to parse requirement: found '', expected: ',' or ')'", id="unclosed-set"
        ),
        pytest.param(
            "x in a", "unable to parse requirement: found 'a' expected: '('", id="set-without-paren"
        ),
        pytest.param(
            "k>x",
            'unable to parse requirement: values[0]: Invalid value: "x": '
            "for 'Gt', 'Lt' operators, the value must be an integer",
            id="gt-not-integer",
        ),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    """Invalid selectors raise SelectorError with labels.Parse's wording."""
    with pytest.raises(SelectorError) as caught:
        validate_label_selector(text)
    assert str(caught.value) == message


def test_bad_key_and_value_name_the_rule() -> None:
    """Key and value errors say which rule was broken, like kubectl."""
    with pytest.raises(
        SelectorError, match=r'^unable to parse requirement: <nil>: Invalid value: "-bad": name part '
    ):
        validate_label_selector("-bad")
    with pytest.raises(SelectorError, match=r'values\[0\]\[k\]: Invalid value: "-v": a valid label must be'):
        validate_label_selector("k=-v")


# --- against the real labels.Parse ------------------------------------------------------

_GO_PROGRAM = """
package main

import (
	"encoding/json"
	"os"

	"k8s.io/apimachinery/pkg/labels"
)

func main() {
	var inputs []string
	if err := json.NewDecoder(os.Stdin).Decode(&inputs); err != nil {
		panic(err)
	}
	answers := make([]string, 0, len(inputs))
	for _, s := range inputs {
		if _, err := labels.Parse(s); err != nil {
			answers = append(answers, "ERR "+err.Error())
		} else {
			answers = append(answers, "OK")
		}
	}
	json.NewEncoder(os.Stdout).Encode(answers)
}
"""

_PIECES = [
    "a",
    "b",
    "app",
    "x.io/k",
    "X.io/k",
    "/k",
    "k/",
    "a/b/c",
    "-v",
    "v_",
    "in",
    "notin",
    "!",
    "=",
    "==",
    "!=",
    ">",
    "<",
    "(",
    ")",
    ",",
    " ",
    "\t",
    "1",
    "-1",
    "99999999999999999999",
    "A_b.c",
    "\u00e9",
    "a" * 64,
    "b" * 63,
    ("d." * 127) + "x/k",
]


def _inputs() -> list[str]:
    fixed = [
        "",
        "app=web",
        "a in (b,,c,)",
        "x in ()",
        "!a=b",
        "a,",
        "a=b=c",
        "k in (-a,b_)",
        "a>1",
        "a<b",
        "a!b",
        "a!!=b",
        "a=(b)",
        "a in b",
        "a in (b c)",
        "a notin (b),c",
        "==a",
        "!",
        "!!a",
        ",a",
    ]
    rng = random.Random(5164)
    generated = ["".join(rng.choice(_PIECES) for _ in range(rng.randrange(1, 8))) for _ in range(4000)]
    return fixed + generated


@pytest.fixture(scope="module")
def go_answers(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """labels.Parse's verdict on every input, from the Go module cache (no network)."""
    return _go_verdicts(tmp_path_factory, _GO_PROGRAM, _inputs())


def _go_verdicts(tmp_path_factory: pytest.TempPathFactory, program: str, inputs: list[str]) -> list[str]:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        pytest.skip("the Go toolchain is not installed")
    workdir = tmp_path_factory.mktemp("goselector")
    (workdir / "go.mod").write_text("module goselector\n\ngo 1.21\n\nrequire k8s.io/apimachinery v0.36.3\n")
    (workdir / "main.go").write_text(program)
    env = dict(os.environ, GOFLAGS="-mod=mod", GOPROXY="off", GOSUMDB="off", GOTOOLCHAIN="local")
    done = subprocess.run(
        [go, "run", "."],
        cwd=workdir,
        input=json.dumps(inputs).encode(),
        capture_output=True,
        env=env,
        timeout=280,
        check=False,
    )
    if done.returncode != 0 and b"GOPROXY=off" in done.stderr:
        pytest.skip("k8s.io/apimachinery is not in the Go module cache")
    assert done.returncode == 0, done.stderr.decode()
    answers: list[str] = json.loads(done.stdout)
    return answers


def _mismatches(parse: Callable[[str], object], inputs: list[str],
                answers: list[str]) -> list[tuple[str, ...]]:
    """(input, our verdict, Go's) wherever ``parse`` does not say what Go said."""
    mismatches = []
    for text, answer in zip(inputs, answers, strict=True):
        try:
            parse(text)
            ours = "OK"
        except SelectorError as error:
            ours = f"ERR {error}"
        if ours != answer:
            mismatches.append((text, ours, answer))
    return mismatches


def test_matches_labels_parse(go_answers: list[str]) -> None:
    """parse_label_selector accepts, rejects and words errors exactly like labels.Parse."""
    assert _mismatches(parse_label_selector, _inputs(), go_answers)[:5] == []


# --- field selectors: against the real fields.ParseSelector, and end to end against kubectl ----------

_GO_FIELDS_PROGRAM = (_GO_PROGRAM.replace("pkg/labels", "pkg/fields")
                      .replace("labels.Parse(s)", "fields.ParseSelector(s)"))

_FIELD_PIECES = ["metadata.name", "status.phase", "a", "=", "==", "!=", ",", "\\", "\\,", "\\=", "\\x",
                 " ", "x y", "\u00e9", "in", "(", ")", "!"]


def _field_inputs() -> list[str]:
    fixed = ["", "metadata.name", "metadata.name=a=b", "=x", "metadata.name==", "a,b", "metadata.name!=x,",
             "foo=bar", "metadata.name in (a)", "metadata.name=a\\,b", "metadata.name=\\", "a=\\x", "b,a"]
    rng = random.Random(1957)
    return fixed + ["".join(rng.choice(_FIELD_PIECES) for _ in range(rng.randrange(1, 7)))
                    for _ in range(3000)]


def test_field_selectors_match_fields_parse_selector(tmp_path_factory: pytest.TempPathFactory) -> None:
    """validate_field_selector accepts, rejects and words errors exactly like the server's parse."""
    inputs = _field_inputs()
    answers = _go_verdicts(tmp_path_factory, _GO_FIELDS_PROGRAM, inputs)
    assert _mismatches(validate_field_selector, inputs, answers)[:5] == []


@pytest.mark.cluster
@pytest.mark.parametrize("selector", ["a,b", "metadata.name=a=b", "metadata.name=\\", "foo=bar", "=x"],
                         ids=["no operator", "unescaped =", "bad escape", "unknown field", "empty field"])
def test_a_bad_field_selector_stops_at_once_with_kubectls_message(k8s: Any, selector: str) -> None:
    """Malformed (checked at start-up) or naming a field the resource does not support (the
    server's 400 at the first list): exit 1 at once, in kubectl's words, not 20 retries and 255."""
    ours = subprocess.run([sys.executable, "-m", "fastobs", "configmaps", "-n", "default", "--listen-addr=",
                           "--field-selector", selector, "--", "true"],
                          capture_output=True, text=True, env=k8s.env, timeout=60)
    theirs = k8s.kubectl("get", "configmaps", "-n", "default", "--field-selector", selector, check=False)
    assert theirs.returncode == 1 and theirs.stderr.startswith("Error from server (BadRequest): ")
    assert ours.returncode == 1, ours.stderr
    assert ours.stderr == "error: " + theirs.stderr.removeprefix("Error from server (BadRequest): ")
