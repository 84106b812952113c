"""A template that fails for an object: oc's error quotes object data, fastobs's does not.

JSONPath's error dumps the whole object, and some Go template errors quote a value of it.
Every language's render errors pass through the worker's runner, which prints the object's
key and what failed, and oc's message only from --loglevel 8 (``template_errors_quote_object``).
"""

from __future__ import annotations

from typing import Any

import pytest

from fastobs.errors import TemplateError
from fastobs.protocol import Job
from fastobs.runner import Runner
from fastobs.settings import RunSettings
from fastobs.templates import compile_template

PASSWORD = "c3VwZXItc2VjcmV0LXBhc3N3b3Jk"  # base64 of super-secret-password
SECRET: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "db", "namespace": "prod", "finalizers": [PASSWORD]},
    "data": {"password": PASSWORD},
}


def _job(ns: str = "prod", name: str = "db") -> Job:
    return {"id": 1, "type": "Sync", "ns": ns, "name": name, "rv": "1", "cached_arg": None}


def _runner(template: str, *, quote_object: bool = False) -> Runner:
    return Runner(RunSettings(command=("true",), template=template, allow_missing_template_keys=False,
                              template_errors_quote_object=quote_object))


def _failure(runner: Runner, job: Job | None = None) -> str:
    with pytest.raises(TemplateError) as caught:
        runner.build_args(job or _job(), SECRET)
    runner.close()
    print(caught.value.message)
    return caught.value.message


@pytest.mark.parametrize(
    ("template", "summary"),
    [
        ("{.data.missing}", 'error executing jsonpath "{.data.missing}" at .data.missing: '
         "missing is not found"),
        ("name={.metadata.name} {.data.password.x}",
         'error executing jsonpath "name={.metadata.name} {.data.password.x}" at .data.password.x: '
         "x is not found"),
        ("{.spec.containers[3].image}", 'error executing jsonpath "{.spec.containers[3].image}" at .spec: '
         "spec is not found"),
        ("{.data.password[3]}", 'error executing jsonpath "{.data.password[3]}" at .data.password[3]: '
         "string is not array or slice"),
        # client-go's own reason quotes the map it could not filter: the summary gives its type.
        ("{.data[?(@.x=='a')]}",
         "error executing jsonpath \"{.data[?(@.x=='a')]}\" at .data[?(@.x=='a')]: "
         "map[string]interface {} is not array or slice and cannot be filtered"),
    ],
)
def test_jsonpath_summary_names_the_path_without_object_data(template: str, summary: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(template, allow_missing=False).render(SECRET)
    error = caught.value
    print(error.summary)
    assert error.summary == summary
    assert PASSWORD not in error.summary
    # oc's message, kept for --loglevel 8, still dumps the object (data included).
    assert PASSWORD in error.message


def test_runner_error_names_the_key_and_path_not_the_object() -> None:
    message = _failure(_runner("{.data.missing}"))
    assert message == (
        'unable to write arguments for prod/db: error executing jsonpath "{.data.missing}" at .data.missing: '
        "missing is not found (object data withheld; --loglevel 8 or more prints it)"
    )


def test_runner_error_of_a_cluster_scoped_object_names_it_alone() -> None:
    message = _failure(_runner("{.data.missing}"), _job(ns=""))
    assert message.startswith("unable to write arguments for db: ")


def test_runner_error_quotes_the_object_when_asked() -> None:
    """--loglevel 8 or more: oc's message, object included, word for word."""
    message = _failure(_runner("{.data.missing}", quote_object=True))
    assert message.startswith(
        'unable to write arguments: error executing jsonpath "{.data.missing}": Error executing template: '
        "missing is not found. Printing more information for debugging the template:\n"
    )
    assert PASSWORD in message


class _ErrorWithoutSummary:
    """A template language whose errors may quote object data and that gives no summary."""

    def render(self, obj: Any) -> str:
        raise TemplateError(f"unable to write arguments: error executing template: range can't iterate "
                            f"over {obj['data']['password']}")


def test_runner_error_without_a_summary_names_only_the_key() -> None:
    runner = _runner("")
    runner.template = _ErrorWithoutSummary()
    message = _failure(runner)
    assert message == ("unable to write arguments for prod/db: the template failed for this object; "
                       "--loglevel 8 or more prints why")
    runner = _runner("", quote_object=True)
    runner.template = _ErrorWithoutSummary()
    assert PASSWORD in _failure(runner)


# ----------------------------------------------------------------------------- Go templates


def _go_runner(template: str, *, quote_object: bool = False) -> Runner:
    return Runner(RunSettings(command=("true",), template=template, output_format="go-template",
                              allow_missing_template_keys=False, template_errors_quote_object=quote_object))


def test_go_missing_key_names_the_key_and_withholds_nothing() -> None:
    """Go's missing-key error quotes no object data: fastobs adds the object's key to it."""
    message = _failure(_go_runner("{{.data.user}}"))
    assert message == (
        'unable to write arguments for prod/db: error executing template "{{.data.user}}": '
        'template: output:1:7: executing "output" at <.data.user>: map has no entry for key "user"'
    )
    assert _failure(_go_runner("{{.data.user}}", quote_object=True)) == (
        'unable to write arguments: error executing template "{{.data.user}}": '
        'template: output:1:7: executing "output" at <.data.user>: map has no entry for key "user"'
    )


@pytest.mark.parametrize(
    ("template", "reason", "withheld"),
    [
        ("{{range .data.password}}{{end}}", "range can't iterate over a value of type string", True),
        ("{{if eq .data .data}}{{end}}",
         "error calling eq: non-comparable type map[string]interface {}", True),
        ("{{if eq .data .metadata.finalizers}}{{end}}",
         "error calling eq: non-comparable types map[string]interface {}, []interface {}", True),
        ("{{.data.password | call}}", "error calling call: non-function of type string", True),
        # The index may come from the object too.
        ("{{index .data.password 99}}", "error calling index: index out of range", True),
        # Go quotes types only here: nothing to withhold.
        ("{{if eq .data .data.password}}{{end}}",
         "error calling eq: incompatible types for comparison: map[string]interface {} and string", False),
    ],
)
def test_go_errors_that_quote_object_values_are_redacted(template: str, reason: str, withheld: bool) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(template, "go-template").render(SECRET)
    error = caught.value
    print(f"oc: {error.message}\nsummary: {error.summary}")
    assert error.summary.endswith(reason)
    assert PASSWORD not in error.summary
    assert error.withheld is withheld
    assert PASSWORD not in _failure(_go_runner(template))
