"""Helpers for the chart's tests: build and run helm, render the chart, read what it rendered.

Where it sits: beside ``k8s_cluster`` and ``fastobs_run``, under ``tests/test_chart*.py`` and
``tests/test_image.py``. In: the chart at ``helm/fastobs`` and its value files. Out: helm's
output, parsed manifests, and the built-in resource table the chart's templates carry.

Invariant: helm always runs with a private, empty HOME/XDG configuration (no repositories,
plugins or caches of the machine leak in) and an explicit ``--kube-version`` for offline
rendering, so a rendering depends only on the chart and the values given.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "fastobs"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
GET_HELM = ROOT / "scripts" / "get-helm"
KUBE_VERSION = "1.36.0"
"""Rendering target: the dev cluster's minor (kube-apiserver v1.36)."""
RESOURCES_TPL = CHART / "templates" / "_resources.tpl"


class HelmError(subprocess.CalledProcessError):
    """helm exited non-zero; str() carries the command and its stderr."""

    def __str__(self) -> str:
        return f"helm {' '.join(self.cmd[1:])} failed (exit {self.returncode}): {(self.stderr or '').strip()}"


def build_helm() -> subprocess.CompletedProcess[str]:
    """Run scripts/get-helm (a no-op when .tools/bin/helm is fresh); the path is stdout's last line."""
    return subprocess.run([str(GET_HELM)], capture_output=True, text=True, timeout=1800, check=False)


def helm_or_skip(home: Path) -> Helm:
    """The helm the tests use: built if needed; skips without Go, unless CI requires it."""
    res = build_helm()
    if res.returncode != 0:
        reason = f"helm could not be built (scripts/get-helm):\n{res.stderr.strip()[-2000:]}"
        if res.returncode == 2 and os.environ.get("FASTOBS_REQUIRE_CLUSTER") != "1":
            pytest.skip(reason)
        pytest.fail(reason, pytrace=False)
    return Helm(res.stdout.strip().splitlines()[-1], home)


@dataclass(frozen=True)
class Helm:
    """One helm binary with an isolated configuration under ``home``."""

    exe: str
    home: Path

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / "config"),
            XDG_CACHE_HOME=str(self.home / "cache"),
            XDG_DATA_HOME=str(self.home / "data"),
        )
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        return env

    def run(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.exe, *args]
        res = subprocess.run(
            cmd, capture_output=True, text=True, env=self.env(kubeconfig), timeout=timeout, check=False
        )
        if check and res.returncode != 0:
            raise HelmError(res.returncode, cmd, res.stdout, res.stderr)
        return res

    def template(
        self,
        *values_files: Path,
        sets: Mapping[str, str] | None = None,
        set_files: Mapping[str, Path] | None = None,
        release: str = "obs",
        namespace: str = "apps",
        extra: Iterable[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``helm template`` of the chart (test hooks included, as ``helm install`` would create them)."""
        args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
        args += value_args(values_files, sets, set_files)
        return self.run(*args, *extra, check=check)

    def render(self, *values_files: Path, **kw: Any) -> list[dict[str, Any]]:
        """The rendered objects, parsed."""
        return parse_manifests(self.template(*values_files, **kw).stdout)


def value_args(
    values_files: Iterable[Path],
    sets: Mapping[str, str] | None = None,
    set_files: Mapping[str, Path] | None = None,
) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set-string" if isinstance(value, str) else "--set", f"{key}={value}"]
    for key, path in (set_files or {}).items():
        args += ["--set-file", f"{key}={path}"]
    return args


def parse_manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: Iterable[Mapping[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``); fails the test when there is not exactly one."""
    hits = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}: {[kinds(hits)]}"
    return dict(hits[0])


def kinds(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)


def workload_container(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    deploy = find(objects, "Deployment")
    containers = deploy["spec"]["template"]["spec"]["containers"]
    return dict(next(c for c in containers if c["name"] == "fastobs"))


# -- the built-in resource table (templates/_resources.tpl) -----------------------------------

_HEADER = """\
{{/*
Built-in resources fastobs can watch, generated from a real kube-apiserver's discovery
(Kubernetes %s); tests/test_chart_cluster.py regenerates it and fails on any difference.
"resources": the canonical name (plural, plus ".group" outside the core group) -> whether
the resource is cluster-scoped. "aliases": every other name kubectl accepts (short names,
singular names, plurals without their group) -> the canonical name, as kubectl resolves it.
*/}}
"""


def resource_table(discovery: list[dict[str, Any]], kube_version: str) -> str:
    """The text of ``_resources.tpl`` for discovery documents (APIResourceLists), in priority order."""
    resources: dict[str, bool] = {}
    entries: list[tuple[str, dict[str, Any]]] = []
    for doc in discovery:
        group_version = doc["groupVersion"]
        group = group_version.split("/")[0] if "/" in group_version else ""
        for r in doc["resources"]:
            if "/" in r["name"] or not {"list", "watch"} <= set(r.get("verbs", [])):
                continue
            canonical = r["name"] + (f".{group}" if group else "")
            if canonical not in resources:
                resources[canonical] = not r["namespaced"]
                entries.append((canonical, r))
    aliases: dict[str, str] = {}
    for canonical, r in entries:
        for name in [r["name"], *r.get("shortNames", []), r.get("singularName", "")]:
            # The first resource in discovery order wins a name, as in kubectl (core "events"
            # before events.k8s.io's).
            if name and name != canonical and name not in resources and name not in aliases:
                aliases[name] = canonical
    lines = [_HEADER % kube_version, '{{- define "fastobs.builtinResources" -}}', "resources:"]
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(resources.items())]
    lines.append("aliases:")
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(aliases.items())]
    lines.append("{{- end -}}")
    return "\n".join(lines) + "\n"


def read_resource_table() -> dict[str, Any]:
    """The committed table, parsed (the YAML between the define and its end)."""
    text = RESOURCES_TPL.read_text()
    body = text.split('{{- define "fastobs.builtinResources" -}}', 1)[1].rsplit("{{- end -}}", 1)[0]
    table: dict[str, Any] = yaml.safe_load(body)
    return table
