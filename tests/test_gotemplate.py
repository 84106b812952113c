"""Go templates: differential tests against kubectl's go-template printer, built from Go modules.

The oracle (tests/data/gotemplate/oracle) runs k8s.io/cli-runtime's GoTemplatePrinter on the
object decoded as oc decodes it, and answers with the bytes written or the whole message oc
prints. Every corpus case is rendered by both; all cases go through one oracle process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from gotemplate_cases import DATA, KUBECTL_CASES, generated_cases, go_cases, load_objects

from fastobs.errors import TemplateError
from fastobs.gocompat import go_is_print
from fastobs.templates import compile_template
from fastobs.templates.gofmt import go_type, json_number
from fastobs.templates.gotemplate import compile_go_template, go_list_cap
from fastobs.templates.gotemplate_parse import is_alphanumeric

ORACLE = DATA / "oracle"
OBJECTS = load_objects()
NUMBER_FORMATS = ["%v", "%d", "%f", "%.2f", "%g", "%e", "%G", "%x", "%X", "%o", "%b", "%c", "%q",
                  "%U", "%T", "%s", "%t", "%8.3e|", "%-+12.4g|", "%#v", "%08.2f", "% d", "%.0f",
                  "%#x", "%#g", "%x|%X"]
GENERATED_SEEDS = (1, 2, 3)
GENERATED_PER_SEED = 1000

Case = tuple[str, str, bool]  # template, object name, strict


def number_cases() -> list[Case]:
    """Every number of numbers.json printed plain and through printf verbs, and compared."""
    keys = sorted(OBJECTS["numbers"]["spec"])
    cases = []
    for key in keys:
        field = f".spec.{key}"
        cases.append((f"{{{{{field}}}}}|{{{{{field} | printf \"%T\"}}}}", "numbers", False))
        for fmt in NUMBER_FORMATS:
            cases.append((f'{{{{printf "{fmt}" {field}}}}}', "numbers", False))
        cases.append((f"{{{{eq {field} 1}}}} {{{{lt {field} 1e21}}}} {{{{eq {field} 0}}}}", "numbers", False))
        cases.append((f"{{{{range $i, $e := {field}}}}}{{{{$i}}}}={{{{$e}}}} {{{{end}}}}", "numbers", False))
    return cases


def odd_key_cases() -> list[Case]:
    """Odd map keys and string values through index, range and the escaping functions."""
    cases = []
    for key in sorted(OBJECTS["configmap"]["data"]):
        quoted = orjson.dumps(key).decode()
        for fn in ("", "html", "js", "urlquery", "len", 'printf "%q"', 'printf "%x"', 'printf "%-20s|"',
                   "base64decode", "print", "println"):
            cases.append((f"{{{{index .data {quoted} | {fn}}}}}" if fn else f"{{{{index .data {quoted}}}}}",
                          "configmap", False))
    cases.append(('{{range $k, $v := .data}}{{printf "%q=%q;" $k $v}}{{end}}', "configmap", False))
    cases.append(("{{range $k, $v := .metadata.labels}}[{{$k}}]{{end}}", "configmap", True))
    emoji = '{{slice (index .data "emoji") 1 3}}|{{index (index .data "emoji") 1}}'
    cases.append((emoji, "configmap", False))
    return cases


def edge_cases() -> list[Case]:
    """Limits: deep nesting, long ranges, slice capacities of decoded lists."""
    cases: list[Case] = [("", "pod", False), (" \n", "pod", True), ("{{/* only a comment */}}", "pod", False)]
    deep_if = "{{if .}}" * 300 + "x" + "{{end}}" * 300
    cases.append((deep_if, "pod", False))
    cases.append(("{{" + "(" * 2000 + "1" + ")" * 2000 + "}}", "pod", False))
    cases.append(("{{" + "(" * 10001 + "1" + ")" * 10001 + "}}", "pod", False))
    for n in (0, 1, 2, 3, 5, 9, 17):
        items = ", ".join(str(i) for i in range(n))
        cases.append((f"{{{{slice .spec.mixed 0 {n}}}}}", "pod", False))
        cases.append((f"{{{{$x := .spec.containers}}}}{{{{slice $x 1 {n}}}}} {items}", "pod", False))
    for cap_probe in (6, 7, 8, 9, 16):
        probe = f"{{{{slice .spec.mixed {cap_probe}}}}}|{{{{slice .spec.mixed 1 2 {cap_probe}}}}}"
        cases.append((probe, "pod", False))
    return cases


PRINTF_CASES = [
    '{{printf "%d %!" "x"}}', '{{printf "%d %d" 1}}', '{{printf "%d" 1 "a" nil .metadata}}',
    '{{printf "%[2]v %[1]v %[3]v" "a" "b"}}', '{{printf "%[2]*[1]d|" 12 5}}', '{{printf "%-*d|" 4 7}}',
    '{{printf "%.*f|%.*f" 2 3.14159 -1 2.5}}', '{{printf "%*d" "x" 1}}', '{{printf "%[0]d" 1}}',
    '{{printf "%[x]d" 1}}', '{{printf "%3[1]d" 1}}', '{{printf "%.[1]d" 1}}', '{{printf "%d%%" 50}}',
    '{{printf "%v %d %s" .metadata.labels .spec.containers .spec.matrix}}',
    '{{printf "%#v" .spec.mixed}}', '{{printf "%+v %#v" .metadata.ownerReferences nil}}',
    '{{printf "%x %X % x %#x" "héllo" "héllo" "abc" "abc"}}', '{{printf "%q %#q %+q" "é`\n" "a`b" "日本"}}',
    '{{printf "%c %q %U %#U" 0x1F389 0x1F389 0x1F389 0x1F389}}', '{{printf "%c|%q" -1 1114112}}',
    '{{printf "%e %E %.3g %g %G" 123456.789 1e-7 0.000012345 1e21 1e-5}}',
    '{{printf "%b %x %X %.2x %#.3X" 8.5 8.5 -8.5 1.0 3.3}}',
    '{{printf "%08.3f|%-8.2f|%+.1e" -3.14159 2.5 12345.678}}',
    '{{printf "%v %.2v %10.3v|" 1i (2+3i) -1.5i}}', '{{printf "%t %v %d" true false true}}',
    '{{printf "%5t|%-6v|" true false}}', '{{printf "%T %T %T %T %T %T" 1 1.5 "s" true nil 1i}}',
    '{{printf "%T %T %T %T" .spec.replicas .spec.ratio .metadata .spec.containers}}',
    '{{printf "%s" 3}} {{printf "%d" 3.5}} {{printf "%z" .metadata.name}}', '{{printf "%w" "x"}}',
    '{{printf "%06d|%-06d|%+06d|% 06d" -42 42 42 42}}', '{{printf "%.0d|%.0d|%5.0d|" 0 1 0}}',
    '{{printf "%#o %O %#b %o" 8 8 5 -8}}', '{{printf "%x" -255}}', '{{printf "%v" 9223372036854775807}}',
    '{{printf "%.3s|%.10s|%5.1s|" "日本語テキスト" "ab" "xyz"}}', '{{printf "%-10q|" "a"}}',
    '{{printf "%6.2f%%" 99.5}}', '{{print 1 2 "a" "b" 3 nil .missing}}', '{{println 1 "a" nil}}',
    '{{print}}{{println}}{{printf ""}}', '{{printf "%v" (slice .spec.mixed 1 3)}}',
    '{{printf "%08b" 5}} {{printf "%#08x" 255}} {{printf "%+q" "\u00e9\x01"}}',
    '{{printf "%.2f %.2f %.2f %.0f %.0f" 0.125 0.375 2.675 0.5 1.5}}',
    '{{printf "%g %g %g %g" 100000.0 1000000.0 1e-4 1e-5}}', '{{printf "%.3e" 0.0}}',
    '{{printf "%v %v" 1e100 5e-324}}', '{{printf "%x %X" 1e100 5e-324}}', '{{printf "%.1x" 1.96875}}',
]


# Templates that are not UTF-8 (a --template argument is bytes): bad bytes in text, in quoted and
# raw strings, in identifiers and in parse errors.
BYTES_CASES = [
    b"\xff{{.metadata.name}}\xfe", b'{{"a\xffb"}}', b"{{`a\xffb`}}", b"{{printf \"%q|%x\" \"\xe9\"}}",
    b"{{.metadata.name\xff}}", b"{{\xff}}", b"{{.metadata.name", b"\xe9\xe9{{len \"\xe9\"}}",
    b"{{'\xff'}}", b"{{define \"\xff\"}}x{{end}}{{template \"\xff\"}}", b"{{.missing}}\xc3",
    b"\xed\xa0\x80{{\"\xed\xa0\x80\" | printf \"%q %+q %x\"}}",
    b'{{js "\xff<"}}{{html "\xff"}}{{urlquery "\xff"}}',
]


def all_groups() -> dict[str, list[Case]]:
    groups = {
        "go": [(t, o, s) for t in go_cases() for o in ("gotest", "pod") for s in (False, True)],
        "kubectl": [(t, o, s) for t in KUBECTL_CASES for o in sorted(OBJECTS) for s in (False, True)],
        "numbers": number_cases(),
        "odd-keys": odd_key_cases(),
        "edges": edge_cases(),
        "printf": [(t, o, False) for t in PRINTF_CASES for o in ("pod", "numbers")],
        "bytes": [(t.decode("utf-8", "surrogateescape"), "pod", strict) for t in BYTES_CASES
                  for strict in (False, True)],
    }
    for seed in GENERATED_SEEDS:
        groups[f"generated-{seed}"] = generated_cases(seed, GENERATED_PER_SEED, sorted(OBJECTS))
    return groups


@pytest.fixture(scope="session")
def oracle(request: pytest.FixtureRequest) -> Path:
    """kubectl's go-template printer in a small Go program, built once into pytest's cache."""
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain is not installed")
    digest = hashlib.sha256()
    for name in ("main.go", "go.mod", "go.sum"):
        digest.update((ORACLE / name).read_bytes())
    binary = Path(request.config.cache.mkdir("gotemplate-oracle")) / digest.hexdigest()[:16]
    if not binary.exists():
        done = subprocess.run(
            ["go", "build", "-o", str(binary), "."], cwd=ORACLE, capture_output=True, text=True,
            env={**os.environ, "GOFLAGS": "-mod=mod"}, timeout=1200, check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return binary


def _request_line(request: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(request) + b"\n"
    except TypeError:  # nested deeper than orjson writes (255)
        return json.dumps(request).encode() + b"\n"


def ask_oracle(binary: Path, cases: list[Case], objects: dict[str, Any] = OBJECTS) -> list[dict[str, Any]]:
    """Run every case through one oracle process; answers as {"out"|"err": str, "parse": bool}."""
    lines = b"".join(
        _request_line({"tmpl": base64.b64encode(t.encode("utf-8", "surrogateescape")).decode(),
                       "obj": objects[o], "strict": s})
        for t, o, s in cases
    )
    done = subprocess.run([str(binary)], input=lines, capture_output=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = []
    for line in done.stdout.splitlines():
        raw = orjson.loads(line)
        decode = lambda b: base64.b64decode(b or "").decode("utf-8", "surrogateescape")  # noqa: E731
        if raw["err"]:
            answers.append({"err": decode(raw["err"]), "parse": raw["parse"]})
        else:
            answers.append({"out": decode(raw["out"])})
    assert len(answers) == len(cases)
    return answers


def fastobs_outcome(text: str, obj: Any, strict: bool) -> dict[str, Any]:
    try:
        template = compile_go_template(text, allow_missing=not strict)
    except TemplateError as exc:
        return {"err": exc.message, "parse": True}
    try:
        return {"out": template.render(obj)}
    except TemplateError as exc:
        return {"err": exc.message, "parse": False}


@pytest.fixture(scope="session")
def answers(oracle: Path) -> dict[str, list[tuple[Case, dict[str, Any]]]]:
    """Every corpus group with the oracle's answer for each case (one oracle run)."""
    groups = all_groups()
    flat = [case for cases in groups.values() for case in cases]
    started = time.monotonic()
    replies = iter(ask_oracle(oracle, flat))
    print(f"\noracle: {len(flat)} cases in {time.monotonic() - started:.1f}s")
    return {name: [(case, next(replies)) for case in cases] for name, cases in groups.items()}


COUNTS: dict[str, tuple[int, int]] = {}


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    if COUNTS:
        compared = sum(c for c, _ in COUNTS.values())
        matched = sum(m for _, m in COUNTS.values())
        detail = ", ".join(f"{name} {m}/{c}" for name, (c, m) in COUNTS.items())
        sys.stderr.write(f"\ngo-template differential: {matched}/{compared} cases identical ({detail})\n")


@pytest.mark.parametrize("group", list(all_groups()))
def test_matches_kubectl_printer(answers: dict[str, list[tuple[Case, dict[str, Any]]]], group: str) -> None:
    """Output bytes, or the whole error message, equal the Go printer's for every case."""
    started = time.monotonic()
    mismatches = []
    for (text, name, strict), want in answers[group]:
        got = fastobs_outcome(text, OBJECTS[name], strict)
        if got != want:
            mismatches.append((text, name, strict, want, got))
    compared = len(answers[group])
    COUNTS[group] = (compared, compared - len(mismatches))
    print(f"{group}: {compared - len(mismatches)}/{compared} identical, "
          f"fastobs {1e3 * (time.monotonic() - started) / compared:.2f} ms per case")
    assert mismatches[:5] == []


# ---------------------------------------------------------------------------------------------
# The same printer, case by case: strictness, files, limits.


def test_strict_missing_key_is_ocs_message(oracle: Path) -> None:
    """--allow-missing-template-keys=false: Go's missingkey=error text, inside oc's wrapping."""
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}, "data": {}}
    with pytest.raises(TemplateError) as caught:
        compile_template("{{.data.x}}", "go-template", allow_missing=False).render(obj)
    assert caught.value.message == (
        'unable to write arguments: error executing template "{{.data.x}}": template: output:1:7: '
        'executing "output" at <.data.x>: map has no entry for key "x"'
    )
    [want] = ask_oracle(oracle, [("{{.data.x}}", "cm", True)], {"cm": obj})
    assert want == {"err": caught.value.message, "parse": False}
    assert compile_template("{{.data.x}}", "go-template").render(obj) == "<no value>"


@pytest.mark.parametrize("fmt", ["go-template", "template"])
def test_inline_formats(fmt: str) -> None:
    """go-template and its template alias take the text itself."""
    template = compile_template("{{.metadata.name}}/{{len .data}}", fmt)
    assert template.render({"metadata": {"name": "a"}, "data": {"x": "1"}}) == "a/1"


@pytest.mark.parametrize("fmt", ["go-template-file", "templatefile"])
def test_file_formats_read_once(tmp_path: Path, fmt: str) -> None:
    """The -file formats read the file once at start-up, keeping its trailing newline."""
    path = tmp_path / "t.gotmpl"
    path.write_text("{{.metadata.name}}\n")
    template = compile_template(str(path), fmt)
    path.write_text("changed")
    assert template.render({"metadata": {"name": "web-0"}}) == "web-0\n"


@pytest.mark.parametrize("fmt", ["go-template-file", "templatefile"])
def test_unreadable_template_file(tmp_path: Path, fmt: str) -> None:
    """A missing file gives kubectl's message (the one JSONPath files give too)."""
    path = tmp_path / "missing"
    with pytest.raises(TemplateError) as caught:
        compile_template(str(path), fmt)
    assert caught.value.message == f"error reading --template {path}, open {path}: no such file or directory"


def test_parse_error_is_ocs_message() -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template("{{.metadata.name", "go-template")
    assert caught.value.message == (
        "error parsing template {{.metadata.name, template: output:1: unclosed action"
    )


def test_recursion_stops_at_gos_depth(oracle: Path) -> None:
    """A template that calls itself fails at Go's depth (100000) with Go's message, no crash."""
    text = '{{define "t"}}{{template "t" .}}{{end}}{{template "t" .}}'
    [want] = ask_oracle(oracle, [(text, "pod", False)])
    started = time.monotonic()
    got = fastobs_outcome(text, OBJECTS["pod"], False)
    print(f"recursion to depth 100000: {time.monotonic() - started:.2f}s")
    assert got == want
    assert "exceeded maximum template depth (100000)" in got["err"]
    # The recursion limit is back to what it was.
    assert sys.getrecursionlimit() < 100000


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_simple_path_agrees_with_general_path(name: str, strict: bool) -> None:
    """Text-and-field templates take a shortcut; it gives the general executor's text or error."""
    texts = ["{{.metadata.name}}", "a{{.kind}}b{{.metadata.labels}}c", "{{.spec.nothing}}",
             "{{.missing.x.y}}", "{{.metadata.name.x}}", "{{.spec.nothing.x}}", "{{.spec}}",
             "{{.spec.big}}{{.spec.one}}",
             "{{.spec.int64max}} {{.spec.huge}} {{.spec.mixed}}", "{{.data.key}}{{.items}}", "plain"]
    for text in texts:
        fast = compile_go_template(text, allow_missing=not strict)
        slow = compile_go_template(text, allow_missing=not strict)
        slow._plan = None
        outcomes = []
        for template in (fast, slow):
            try:
                outcomes.append(template.render(OBJECTS[name]))
            except TemplateError as exc:
                outcomes.append("error: " + exc.message)
        assert outcomes[0] == outcomes[1], text


def test_deeply_nested_objects(oracle: Path) -> None:
    """Objects nested as deep as the watch parser allows print as Go prints them, no RecursionError."""
    deep: Any = "leaf"
    for i in range(600):
        deep = {"a": deep} if i % 2 else [deep, i]
    obj = {"apiVersion": "v1", "kind": "Deep", "metadata": {"name": "d"}, "deep": deep}
    cases: list[Case] = [("{{.deep}}", "obj", False), ("{{printf \"%v|%d\" .deep .deep}}", "obj", False),
                         ("{{range .deep}}{{.}}{{end}}", "obj", False), ("{{.}}", "obj", True)]
    wants = ask_oracle(oracle, cases, {"obj": obj})
    for (text, _, strict), want in zip(cases, wants, strict=True):
        assert fastobs_outcome(text, obj, strict) == want, text


def test_render_is_repeatable() -> None:
    """Variables and state never leak from one render to the next."""
    template = compile_go_template("{{$n := .n}}{{range .items}}[{{$n}}{{.}}]{{end}}{{$n}}")
    assert template.render({"n": 1, "items": ["a", "b"]}) == "[1a][1b]1"
    assert template.render({"n": 2, "items": []}) == "2"


def test_numbers_are_what_kubectls_json_round_trip_leaves() -> None:
    """int64 stays; other numbers are float64, read back as int64 when spelled as integers."""
    assert [json_number(v) for v in (3, 1.0, 1e6, 1.5, 1e20, 1e21, -0.0, 2**63)] == [
        3, 1, 1000000, 1.5, 1e20, 1e21, 0, 9.223372036854776e18]
    assert [go_type(json_number(v)) for v in (1e20, 2**63 - 1, 4.611686018427388e18)] == [
        "float64", "int64", "int64"]
    assert json_number(4.611686018427388e18) == 4611686018427388000  # Go's shortest spelling


def test_decoded_list_capacity_matches_go(oracle: Path) -> None:
    """slice may reach past a list's length up to the capacity Go's JSON decoder left on it."""
    lengths = [0, 1, 2, 3, 5, 9, 17, 100, 255, 256, 257, 300, 513, 849, 1000, 2100, 5000]
    obj = {"apiVersion": "v1", "kind": "List", "metadata": {},
           "lists": {str(n): list(range(n)) for n in lengths}}
    cases: list[Case] = []
    for n in lengths:
        cap = go_list_cap(n)
        cases.append((f'{{{{len (slice (index .lists "{n}") 0 {cap})}}}}', "obj", False))
        cases.append((f'{{{{slice (index .lists "{n}") 0 {cap + 1}}}}}', "obj", False))
    wants = ask_oracle(oracle, cases, {"obj": obj})
    for (text, _, strict), want in zip(cases, wants, strict=True):
        assert fastobs_outcome(text, obj, strict) == want, text
    print("capacities:", {n: go_list_cap(n) for n in lengths})


def test_unicode_classes_are_gos(oracle: Path) -> None:
    """Every code point is printable, a letter or a digit for fastobs exactly when it is for Go."""
    done = subprocess.run([str(oracle), "unicode"], capture_output=True, text=True, timeout=60, check=True)
    want: dict[int, tuple[bool, bool]] = {}
    for line in done.stdout.splitlines():
        first, last, printable, alnum = line.split()
        for code in range(int(first), int(last) + 1):
            want[code] = (printable == "true", alnum == "true")
    differ = [hex(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF
              and (go_is_print(chr(code)), is_alphanumeric(chr(code)) and code != 0x5F)
              != want.get(code, (False, False))]
    print(f"{len(want)} code points printable or alphanumeric in Go; {len(differ)} differ")
    assert differ == []


def test_worker_side_modules_stay_light() -> None:
    """The Go template modules run in workers: no cluster client stack in their imports."""
    code = (
        "import sys, fastobs.templates.gotemplate\n"
        "heavy = ('kubernetes', 'aiohttp', 'prometheus_client', 'urllib3', 'yaml')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == "[]"
