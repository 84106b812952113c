"""Template rendering alone: microseconds per object for JSONPath and Go templates.

    python bench/templates.py [--objects N] [--repeat R] [--json]

Each template is compiled once, as fastobs does at start-up, then rendered over N distinct
~6 KB Pods (``pods.py``, decoded with orjson as a worker decodes them); the figure is the best
of R passes divided by N. The templates are pairs that print the same thing in both
languages, plus Go-only ones with functions. A language this checkout does not support
(an older fastobs has no Go templates) prints "not supported" and the run goes on, so the
same command compares two checkouts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))
import pods  # noqa: E402

from fastobs.errors import TemplateError  # noqa: E402
from fastobs.templates import compile_template  # noqa: E402

TEMPLATES = [
    ("name", "jsonpath", "{.metadata.name}"),
    ("name", "go-template", "{{.metadata.name}}"),
    ("four fields", "jsonpath", "{.metadata.namespace}/{.metadata.name} {.spec.nodeName} {.status.phase}"),
    ("four fields", "go-template",
     "{{.metadata.namespace}}/{{.metadata.name}} {{.spec.nodeName}} {{.status.phase}}"),
    ("range", "jsonpath", "{range .status.conditions[*]}{.type}={.status} {end}"),
    ("range", "go-template", "{{range .status.conditions}}{{.type}}={{.status}} {{end}}"),
    ("filter", "jsonpath", '{.status.conditions[?(@.type=="Ready")].status}'),
    ("filter", "go-template", '{{range .status.conditions}}{{if eq .type "Ready"}}{{.status}}{{end}}{{end}}'),
    ("index+if", "go-template",
     '{{if eq .status.phase "Running"}}{{index .metadata.labels "app"}}{{else}}-{{end}}'),
    ("printf", "go-template",
     '{{printf "%s/%s gen=%d" .metadata.namespace .metadata.name .metadata.generation}}'),
]


def measure(objects: list[Any], language: str, text: str, repeat: int) -> float | None:
    try:
        template = compile_template(text, language)
    except TemplateError:
        return None
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for obj in objects:
            template.render(obj)
        best = min(best, time.perf_counter() - started)
    return best / len(objects) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
    factory = pods.PodTemplate()
    objects = [orjson.loads(factory.render(i, 1000 + i, f"ns-{i % 7}")) for i in range(args.objects)]
    for name, language, text in TEMPLATES:
        us = measure(objects, language, text, args.repeat)
        if args.json:
            print(json.dumps({"template": name, "language": language, "us_per_object": us, "text": text}))
        else:
            figure = "not supported" if us is None else f"{us:8.2f} us"
            print(f"{figure:>14}  {language:<12} {name:<12} {text}")


if __name__ == "__main__":
    main()
