"""Go-template test corpus: hand-picked cases, kubectl's own templates and a seeded generator.

Used by tests/test_gotemplate.py, which renders every case with fastobs and with a Go oracle
built from k8s.io/cli-runtime's go-template printer, and compares the two.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson

DATA = Path(__file__).parent / "data" / "gotemplate"
POD = Path(__file__).parent / "data" / "template" / "object.json"


def load_objects() -> dict[str, Any]:
    """The objects every corpus template runs against, by name."""
    objects = {
        "pod": orjson.loads(POD.read_bytes()),
        "configmap": orjson.loads((DATA / "configmap.json").read_bytes()),
        "numbers": orjson.loads((DATA / "numbers.json").read_bytes()),
        "gotest": orjson.loads((DATA / "gotest.json").read_bytes()),
    }
    objects["list"] = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "items": [objects["pod"], objects["configmap"]], "data": {"username": "aHVudGVy"},
    }
    return objects


def go_cases() -> list[str]:
    """Every template string in Go's own text/template tests (exec, parse, multi, lex, examples)."""
    cases: list[str] = orjson.loads((DATA / "go_cases.json").read_bytes())
    return cases


# kubectl's printer tests (k8s.io/cli-runtime/pkg/printers/template_test.go) and the templates
# kubectl's command tests (test/cmd/*.sh) use with -o go-template.
KUBECTL_CASES = [
    "{{ .data.username | base64decode }}",
    "{{ .data.badb64 | base64decode }}",
    "{{ eq .count 1}}",
    "{{ eq .spec.replicas 3}}",
    '{{if (exists . "status" "containerStatuses")}}{{range .status.containerStatuses}}'
    '{{if (and (eq .name "foo") (exists . "state" "running"))}}true{{end}}{{end}}{{end}}',
    '{{and ((index .currentState.info "foo").state.running.startedAt) '
    ".currentState.info.net.state.running.startedAt}}",
    "{{.name}}",
    "{{len .items}}",
    "{{ .apiVersion }}", "{{ .data.key }}", "{{ .kind }}", "{{ .metadata.name }}",
    "{{ .metadata.resourceVersion }}", "{{ .status.phase }}",
    "{{ (index (index .spec.containers 0).ports 0).containerPort}}",
    "{{ len (index .spec.containers 0).ports }}",
    "{{((index (index .spec.containers 0).ports 0)).protocol}}",
    "{{(index .spec.containers 0).name}}",
    "{{(index .spec.containers 2).args}}",
    "{{(len .items)}}", "{{(len .spec.containers)}}", "{{.data}}", "{{.items}}",
    "{{.metadata.annotations}}", "{{.metadata.deletionTimestamp}}", "{{.metadata.labels}}",
    "{{.metadata.labels.app}}", "{{.metadata.name}}", "{{.missing}}", "{{.spec.nodeName}}",
    "{{.spec.replicas}}", "{{.spec.paused}}", "{{len .spec.containers}}",
    "{{range .items}}{{.metadata.name}},{{end}}",
    "{{range .spec.containers}}{{.name}} {{end}}",
    "{{range.items}}{{.metadata.name}}:{{end}}",
    "{{range.spec.containers}}{{.image}}:{{end}}",
    "{{range.spec.containers}}{{.name}}:{{end}}",
    "{{range.status.conditions}}{{.type}}{{end}}",
    "{{range.items}}{{if .metadata.annotations.a}}found{{end}}{{end}}",
    "{{range.items}}{{range .metadata.labels}}{{.}}:{{end}}{{end}}",
    "{{range .spec.containers}}{{range .ports}}{{.containerPort}}/{{.protocol}} {{end}}{{end}}",
    "{{range $k, $v := .metadata.labels}}{{$k}}={{$v}};{{end}}",
    "{{range .status.conditions}}{{if eq .status \"True\"}}{{.type}} {{end}}{{end}}",
    "{{.metadata.namespace}}/{{.metadata.name}}",
    '{{index .metadata.labels "app.kubernetes.io/name"}}',
    '{{index .metadata.annotations "kubernetes.io/created-by"}}',
    '{{index .data "a.b"}}|{{index .data "with space"}}|{{index .data ""}}|{{index .data "日本"}}',
    "{{if .spec.nodeName}}{{.spec.nodeName}}{{else}}unscheduled{{end}}",
    "{{with .status.podIP}}{{.}}{{else}}none{{end}}",
    "{{.status.hostIP}} {{.status.podIP}}",
    '{{printf "%s/%s" .metadata.namespace .metadata.name}}',
    '{{printf "%d replicas" .spec.replicas}}',
    '{{printf "%v" .spec}}',
    '{{printf "%q" .metadata.annotations.note}}',
    "{{.spec.ratio}} {{.spec.one}} {{.spec.million}} {{.spec.big}} {{.spec.almostBig}} {{.spec.tiny}}",
    "{{.spec.small}} {{.spec.pi}} {{.spec.negFloat}} {{.spec.int64max}} {{.spec.huge}} {{.spec.negative}}",
    "{{.spec.mixed}} {{.spec.matrix}} {{.spec.nested}} {{.spec.emptyList}} {{.spec.emptyMap}}",
    "{{.spec}}",
    "{{.}}",
    "{{json .metadata}}",
    "{{.metadata.name | printf \"%q\"}}",
    "{{- .metadata.name -}}\n",
    "{{.metadata.name}}\n",
]


# ---------------------------------------------------------------------------------------------
# Seeded generator of templates over the corpus objects.

FIELDS = [
    ".metadata.name", ".metadata.namespace", ".metadata.labels", ".metadata.labels.app",
    ".metadata.annotations", ".metadata.deletionTimestamp", ".metadata.generation",
    ".metadata.ownerReferences", ".spec", ".spec.replicas", ".spec.ratio", ".spec.one",
    ".spec.million", ".spec.big", ".spec.almostBig", ".spec.tiny", ".spec.small", ".spec.pi",
    ".spec.negative", ".spec.negFloat", ".spec.int64max", ".spec.huge", ".spec.nothing",
    ".spec.emptyList", ".spec.emptyMap", ".spec.nested.a.b.c", ".spec.matrix", ".spec.mixed",
    ".spec.containers", ".spec.paused", ".status.phase", ".status.conditions",
    ".status.addresses", ".data", ".data.key", ".data.json", ".data.html", ".data.ctrl",
    ".data.emoji", ".data.percent", ".data.username", ".spec.zero", ".spec.negZero",
    ".spec.negZeroFloat", ".spec.oneFloat", ".spec.half", ".spec.third", ".spec.millionFloat",
    ".spec.e20", ".spec.e21", ".spec.e22", ".spec.smaller", ".spec.maxFloat", ".spec.int64min",
    ".spec.beyondInt64", ".spec.belowInt64", ".spec.uint64max", ".spec.bigInt", ".spec.twoPow62f",
    ".spec.twoPow63f", ".spec.ports", ".spec.bools", ".items", ".missing", ".missing.deeper",
    ".kind", ".apiVersion", ".I", ".X", ".SI", ".MSI", ".MSI.one", ".SMSI", ".NIL", ".True",
    ".Empty3", ".U.V", ".FloatZero", ".z", ".y",
]
ELEMENT_FIELDS = [".name", ".image", ".ports", ".type", ".status", ".port", ".weight", ".a", ".x",
                  ".containerPort", ".missing", ".one", ""]
LITERALS = [
    "0", "1", "-1", "3", "17", "1.5", "-2.5", "1e3", "1e21", "0x1F", "0o17", "0b101", "1_000",
    "'a'", "'\\n'", "'日'", "1i", "2+3i", "true", "false", "nil", '"abc"', '""', '"with space"',
    "`raw\\n`", '"é\\u00e9\\x41"', '"%d"', "9223372036854775807", "18446744073709551615",
    "0x1p-2", "1.0", ".5", "5.", "007", "-0",
]
FORMATS = [
    "%v", "%d", "%s", "%q", "%x", "%X", "%f", "%.2f", "%g", "%e", "%E", "%G", "%t", "%T", "%5d",
    "%-5d|", "%05d", "%+d", "% d", "%#x", "%#o", "%o", "%O", "%b", "%c", "%U", "%#U", "%8.3f",
    "%-8.3e|", "%+.3g", "%#v", "%+v", "%10s|", "%-10s|", "%.2s", "%5.1q", "%#q", "%+q", "% x",
    "%#X", "%x %x", "%[2]v %[1]v", "%*d", "%.*f", "%!", "%z", "%", "%[5]d", "%v %v %v", "%#g",
    "%.0f", "%.3x", "%10.4v|", "%08.3f", "%-08d|", "%w", "%F", "%.1e", "%6.2G",
]
# What a range walks: lists, maps, small numbers and things it cannot walk (never a huge number,
# which would make Go loop for ever).
RANGE_SOURCES = [
    ".spec.containers", ".status.conditions", ".metadata.labels", ".metadata.annotations", ".spec",
    ".spec.mixed", ".spec.matrix", ".spec.emptyList", ".spec.emptyMap", ".data", ".spec.ports",
    ".spec.bools", ".items", ".SI", ".MSI", ".SMSI", ".Empty3", ".missing", ".spec.nothing", ".",
    "$", "3", "0", "-2", "1.5", ".spec.replicas", ".I", ".metadata.name", ".spec.ratio", "(len .)",
    ".spec.zero", ".True", "nil", "(slice .spec.containers 1)", ".z", ".spec.nested",
]
FUNCS_1 = ["len", "not", "html", "js", "urlquery", "print", "println", "base64decode"]
COMPARE = ["eq", "ne", "lt", "le", "gt", "ge"]


class GoTemplateFuzzer:
    """Random templates in text/template's grammar, biased to what kubectl users write."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.vars: list[str] = []
        self.blocks = 0

    def field(self) -> str:
        r = self.rnd.random()
        if r < 0.08 and self.vars:
            return self.rnd.choice(self.vars) + self.rnd.choice(["", ".name", ".a", ".metadata.name"])
        if r < 0.12:
            return "$" + self.rnd.choice(["", ".metadata.name", ".spec", ".missing"])
        if r < 0.18:
            return self.rnd.choice(ELEMENT_FIELDS) or "."
        return self.rnd.choice(FIELDS)

    def operand(self, depth: int) -> str:
        r = self.rnd.random()
        if r < 0.45 or depth > 2:
            return self.field()
        if r < 0.7:
            return self.rnd.choice(LITERALS)
        if r < 0.8 and self.vars:
            return self.rnd.choice(self.vars)
        return "(" + self.pipeline(depth + 1) + ")"

    def command(self, depth: int) -> str:
        rnd = self.rnd
        r = rnd.random()
        if r < 0.3:
            return self.operand(depth)
        if r < 0.4:
            return f"{rnd.choice(FUNCS_1)} {self.operand(depth + 1)}"
        if r < 0.52:
            return f"{rnd.choice(COMPARE)} {self.operand(depth + 1)} {self.operand(depth + 1)}"
        if r < 0.6:
            args = " ".join(self.operand(depth + 1) for _ in range(rnd.randint(0, 3)))
            return f'printf "{rnd.choice(FORMATS)}" {args}'.rstrip()
        if r < 0.68:
            args = " ".join(self.rnd.choice([self.operand(depth + 1), str(rnd.randint(-1, 3)), '"name"',
                                             '"app"', '"a.b"']) for _ in range(rnd.randint(1, 3)))
            return f"index {self.operand(depth + 1)} {args}"
        if r < 0.73:
            args = " ".join(str(rnd.randint(-1, 5)) for _ in range(rnd.randint(0, 3)))
            return f"slice {self.operand(depth + 1)} {args}".rstrip()
        if r < 0.8:
            word = rnd.choice(["and", "or"])
            return word + " " + " ".join(self.operand(depth + 1) for _ in range(rnd.randint(1, 3)))
        if r < 0.85:
            keys = " ".join(rnd.choice(['"metadata"', '"name"', '"spec"', '"containers"', "0", "1",
                                        '"state"', "nil", '"a.b"']) for _ in range(rnd.randint(0, 3)))
            return f"exists {self.operand(depth + 1)} {keys}".rstrip()
        if r < 0.9:
            args = " ".join(self.operand(depth + 1) for _ in range(rnd.randint(0, 3)))
            return f"{rnd.choice(['print', 'println', 'html', 'js', 'urlquery'])} {args}".rstrip()
        if r < 0.93:
            return f"call {self.operand(depth + 1)}"
        return self.operand(depth)

    def pipeline(self, depth: int = 0) -> str:
        parts = [self.command(depth)]
        while self.rnd.random() < 0.25 and len(parts) < 3:
            parts.append(self.rnd.choice([
                "printf \"%v\"", "print", "len", "not", "html", "js", "urlquery", "printf \"%q|%d\"",
                "and true", "or false", "eq 3", "index", "slice", "base64decode", "println", "exists",
            ]))
        return " | ".join(parts)

    def trim(self, text: str) -> str:
        r = self.rnd.random()
        if r < 0.1:
            return "{{- " + text + " -}}"
        if r < 0.11:
            return "{{-" + text + "}}"  # no space: Go reads a negative number
        if r < 0.2:
            return "{{ " + text + " }}"
        return "{{" + text + "}}"

    def block(self, depth: int) -> str:
        rnd = self.rnd
        r = rnd.random()
        if depth > 2 or r < 0.35:
            return self.trim(self.pipeline())
        if r < 0.45:
            return rnd.choice(["x", " ", "\n", ",", ":", "  \n\t", "é", "%", "x}", "{x"])
        if r < 0.55:
            value = self.pipeline()
            if self.vars and rnd.random() < 0.15:
                return self.trim(f"{rnd.choice(self.vars)} = {value}") + self.body(depth + 1)
            name = f"$v{len(self.vars)}"
            self.vars.append(name)
            return self.trim(f"{name} := {value}") + self.body(depth + 1)
        if r < 0.65:
            head = rnd.choice(["if", "with"])
            saved = list(self.vars)
            out = "{{" + head + " " + self.pipeline() + "}}" + self.body(depth + 1)
            self.vars = list(saved)
            if rnd.random() < 0.3:
                out += "{{else " + head + " " + self.pipeline() + "}}" + self.body(depth + 1)
                self.vars = list(saved)
            if rnd.random() < 0.5:
                out += "{{else}}" + self.body(depth + 1)
            self.vars = saved
            return out + "{{end}}"
        if r < 0.82:
            saved = list(self.vars)
            decl = rnd.choice(["", "", "$i, $e := ", "$e := ", "$k, $v := "])
            self.vars += [v.strip(":= ") for v in decl.split(", ") if v.strip()]
            source = rnd.choice(RANGE_SOURCES)
            body = self.body(depth + 1)
            self.vars = saved + [v.strip(":= ") for v in decl.split(", ") if v.strip()]
            if rnd.random() < 0.2:
                body += "{{" + rnd.choice(["break", "continue"]) + "}}"
            if rnd.random() < 0.3:
                word = rnd.choice(["break", "continue"])
                body = "{{if " + self.pipeline() + "}}{{" + word + "}}{{end}}" + body
            out = "{{range " + decl + source + "}}" + body
            if rnd.random() < 0.3:
                self.vars = list(saved)
                out += "{{else}}" + self.body(depth + 1)
            self.vars = saved
            return out + "{{end}}"
        if r < 0.87:
            return "{{/* comment */}}" if rnd.random() < 0.5 else "{{- /* trimmed */ -}}"
        if r < 0.9:
            # Only the top level calls templates: a define calling itself recurses 100000 deep
            # (test_recursion_limit covers that once).
            name = rnd.choice(['"t"', '"other"', '"missing"'] if depth == 0 else ['"other"', '"missing"'])
            return "{{template " + name + rnd.choice(["", " .", " .metadata", " .spec.containers"]) + "}}"
        self.blocks += 1
        head = "{{block \"b" + str(self.blocks) + "\" " + self.field() + "}}"
        saved = list(self.vars)
        self.vars = []  # a block's body is a template of its own: no outer variables
        body = self.body(depth + 1)
        self.vars = saved
        return head + body + "{{end}}"

    def body(self, depth: int) -> str:
        return "".join(self.block(depth) for _ in range(self.rnd.randint(1, 3)))

    def template(self) -> str:
        self.vars = []
        self.blocks = 0
        text = self.body(0)
        if self.rnd.random() < 0.15:
            self.vars = []
            text = "{{define \"t\"}}" + self.body(2) + "{{end}}" + text
        if self.rnd.random() < 0.05:
            text = "{{define \"other\"}}[{{.}}]{{end}}" + text
        if self.rnd.random() < 0.06:
            at = self.rnd.randrange(len(text) + 1)
            text = text[:at] + self.rnd.choice(list("{}()|$.\"'`:=,-\n ")) + text[at + 1 :]
        return text

    def soup(self) -> str:
        """Random token soup: mostly parse errors, each with Go's message."""
        pieces = ["{{", "}}", "{{-", "-}}", " ", ".", ".a", "$", "$x", ":=", "=", "|", "(", ")", "if",
                  "else", "end", "range", "with", "define", "template", "block", "break", "continue",
                  "nil", "true", '"s"', "`r`", "'c'", "1", "1.5", "0x", "1e", "+", "-", ",", "#", "/*",
                  "*/", "\n", "len", "and", "foo", "printf", "é", "\t", "{", "}"]
        return "".join(self.rnd.choice(pieces) for _ in range(self.rnd.randint(1, 14)))


def generated_cases(seed: int, count: int, object_names: list[str]) -> list[tuple[str, str, bool]]:
    """(template, object name, strict) triples from the seeded generator."""
    fuzzer = GoTemplateFuzzer(seed)
    cases = []
    for _ in range(count):
        text = fuzzer.soup() if fuzzer.rnd.random() < 0.1 else fuzzer.template()
        cases.append((text, fuzzer.rnd.choice(object_names), fuzzer.rnd.random() < 0.25))
    return cases
