"""The chart's PodDisruptionBudget for a group of replicas: rendered by a real helm, checked
offline by the values schema, and accepted by the real API server (strict server-side dry
run), whose eviction API is what honours it.

The other renderings (every file in helm/fastobs/ci) go through helm lint, kubernetes-validate
and the server-side dry run in tests/test_chart.py and tests/test_chart_cluster.py; the group
rendering there includes the budget too.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from chart_helm import CHART, Helm, find, helm_or_skip
from k8s_cluster import KubeCluster

DEFAULT = CHART / "ci" / "default-values.yaml"
GROUP = CHART / "ci" / "group-values.yaml"


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return helm_or_skip(tmp_path_factory.mktemp("helm-home"))


def budgets(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "PodDisruptionBudget"]


def test_a_group_gets_a_budget_of_one_pod_selecting_its_pods(helm: Helm) -> None:
    objects = helm.render(GROUP, namespace="apps")
    pdb = find(objects, "PodDisruptionBudget", "obs-fastobs")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["namespace"] == "apps"
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    selector = pdb["spec"]["selector"]["matchLabels"]
    deploy = find(objects, "Deployment")
    assert selector == deploy["spec"]["selector"]["matchLabels"]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items(), "the budget must select the group's pods"
    print(f"PodDisruptionBudget {pdb['metadata']['name']}: {pdb['spec']}")


def test_one_pod_gets_no_budget_even_in_a_group(helm: Helm) -> None:
    # A budget on one pod that allows no eviction would block every node drain.
    assert budgets(helm.render(DEFAULT)) == []
    assert budgets(helm.render(DEFAULT, sets={"group.enabled": True})) == []


def test_the_budget_can_be_turned_off_or_widened(helm: Helm) -> None:
    assert budgets(helm.render(GROUP, sets={"podDisruptionBudget.enabled": False})) == []
    wide = find(helm.render(GROUP, sets={"podDisruptionBudget.maxUnavailable": "50%"}), "PodDisruptionBudget")
    assert wide["spec"]["maxUnavailable"] == "50%"
    two = find(helm.render(GROUP, sets={"podDisruptionBudget.maxUnavailable": 2}), "PodDisruptionBudget")
    assert two["spec"]["maxUnavailable"] == 2


@pytest.mark.parametrize("bad", [0, "half", "0%", "150%"])
def test_the_schema_refuses_a_budget_that_blocks_every_drain_or_is_not_a_number(helm: Helm, bad: Any) -> None:
    res = helm.template(GROUP, sets={"podDisruptionBudget.maxUnavailable": bad}, check=False)
    assert res.returncode != 0, f"maxUnavailable={bad!r} was accepted"
    assert "/podDisruptionBudget/maxUnavailable" in res.stderr, res.stderr
    print(f"{bad!r}: {res.stderr.strip().splitlines()[-1].strip()}")


@pytest.mark.cluster
@pytest.mark.parametrize("max_unavailable", [1, "34%"])
def test_the_api_server_accepts_the_budget(helm: Helm, k8s: KubeCluster, tmp_path: Path,
                                           max_unavailable: Any) -> None:
    ns = f"pdb-{secrets.token_hex(3)}"
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    rendered = helm.template(GROUP, namespace=ns,
                             sets={"podDisruptionBudget.maxUnavailable": max_unavailable}).stdout
    manifest = tmp_path / "group.yaml"
    manifest.write_text(rendered)
    res = k8s.kubectl("apply", "--dry-run=server", "--validate=strict", "--warnings-as-errors",
                      "-f", str(manifest), check=False)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("poddisruptionbudget")), "")
    assert "(server dry run)" in line, res.stdout
    print(line)
