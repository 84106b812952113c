"""Templates: the ``--template`` text compiled once, then rendered for every event.

Where it sits: the parent compiles the template at start-up with :func:`compile_template`
(after discovery, where oc checks it: a bad template exits 1), and so does every worker's
``runner``, which renders each object with ``Template.render``; the result is the single
template argument oc appends to the command's argv. This package only dispatches on the
output format (``-o``) and reads template files; each language is one module:

* ``jsonpath`` -- kubectl's JSONPath (``jsonpath``, ``jsonpath-as-json``, ``jsonpath-file``).
* ``gotemplate`` -- Go's text/template as kubectl's go-template printer runs it
  (``go-template``, ``template``, ``go-template-file``, ``templatefile``); it parses with
  ``gotemplate_parse`` and prints values with ``gofmt``.

In: template text and output format; then decoded JSON objects. Out: a :class:`Template`
whose ``render`` gives the text kubectl's printer for that format would write for one object
(no trailing newline), or oc's error: a :class:`~fastobs.errors.UsageError` for an ``-o``
that takes no template, a :class:`~fastobs.errors.TemplateError` for a template that does
not parse.

Invariant: imports only the standard library, orjson and fastobs's own small modules (each
language module is imported only when its format is used), so worker processes stay light.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from fastobs.errors import TemplateError, UsageError
from fastobs.gocompat import go_quote

__all__ = ["FORMATS", "Template", "check_output_format", "compile_template"]

FORMATS: Final = ("go-template", "go-template-file", "jsonpath", "jsonpath-as-json", "jsonpath-file",
                  "template", "templatefile")
"""Every ``-o`` value that takes a template, in the order oc lists them."""
JSONPATH_FORMATS: Final = ("jsonpath", "jsonpath-file", "jsonpath-as-json")
GO_TEMPLATE_FORMATS: Final = ("go-template", "go-template-file", "template", "templatefile")


class Template(Protocol):
    """A compiled template: ``render`` turns one object into the template argument."""

    def render(self, obj: Any) -> str: ...


def compile_template(text: str, output_format: str = "jsonpath", *, allow_missing: bool = True) -> Template:
    """Compile ``text`` for ``output_format`` once, as oc checks it after discovery.

    An empty ``text`` gives a template that always renders ``""`` whatever the format (oc
    builds no printer then and ignores ``-o``). Raises :class:`UsageError` for an ``-o``
    that takes no template, and :class:`TemplateError` for a template that cannot be used.
    """
    if not text:
        return _Constant("")
    check_output_format(output_format)
    if output_format in GO_TEMPLATE_FORMATS:
        if output_format in ("go-template-file", "templatefile"):
            text = _read_template_file(text)
        from fastobs.templates.gotemplate import compile_go_template

        return compile_go_template(text, allow_missing=allow_missing)
    if output_format == "jsonpath-file":
        text = _read_template_file(text)
    from fastobs.templates.jsonpath import compile_jsonpath

    return compile_jsonpath(text, allow_missing=allow_missing, as_json=output_format == "jsonpath-as-json")


def check_output_format(output_format: str) -> None:
    """oc's printer matching: raise :class:`UsageError` unless ``-o`` names a template format."""
    if output_format not in FORMATS:
        raise UsageError(f"unable to match a printer suitable for the output format "
                         f"{go_quote(output_format)}, allowed formats are: {','.join(FORMATS)}")


def _read_template_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read()
    except ValueError:  # an embedded NUL byte: Go's open(2) fails with EINVAL
        raise TemplateError(f"error reading --template {path}, open {path}: invalid argument") from None
    except OSError as exc:
        # Go's *PathError spelling: "open <path>: no such file or directory".
        op = "read" if isinstance(exc, IsADirectoryError) else "open"
        reason = exc.strerror or str(exc)
        reason = reason[:1].lower() + reason[1:]
        raise TemplateError(f"error reading --template {path}, {op} {path}: {reason}") from None


class _Constant:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def render(self, obj: Any) -> str:
        return self.text
