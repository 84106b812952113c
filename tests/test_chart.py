"""The Helm chart (helm/fastobs) rendered by a real helm, without a cluster.

helm v3 is built from Go modules by scripts/get-helm. Every values file in helm/fastobs/ci
goes through ``helm lint --strict`` and ``helm template``; every rendered object is
validated offline with kubernetes-validate (strict, oldest and newest supported Kubernetes);
the assertions below read what the chart rendered. The real API server's verdict (admission,
Pod Security, server-side field validation, RBAC) is in test_chart_cluster.py.
Without Go these tests skip, unless FASTOBS_REQUIRE_CLUSTER=1 (then they fail).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_helm import (
    CHART,
    CI_VALUES,
    ROOT,
    Helm,
    find,
    helm_or_skip,
    kinds,
    workload_container,
)

DEFAULT = CHART / "ci" / "default-values.yaml"
ALL_NAMESPACES = CHART / "ci" / "all-namespaces-values.yaml"
CLUSTER_SCOPE = CHART / "ci" / "cluster-scope-values.yaml"
CRD = CHART / "ci" / "crd-values.yaml"
MONITORING = CHART / "ci" / "monitoring-values.yaml"
EXISTING = CHART / "ci" / "existing-objects-values.yaml"
BAKED = CHART / "ci" / "baked-image-values.yaml"
GROUP = CHART / "ci" / "group-values.yaml"
RULES = ROOT / "deploy" / "prometheus" / "fastobs-rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "fastobs-dashboard.json"
VALIDATE_VERSIONS = ("1.30.0", "1.37.0")
"""The chart's kubeVersion floor and the newest schemas kubernetes-validate bundles."""
CLUSTER_SCOPED_KINDS = {"ClusterRole", "ClusterRoleBinding", "Namespace"}


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return helm_or_skip(tmp_path_factory.mktemp("helm-home"))


def ci_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


# -- lint and render every values file --------------------------------------------------------


def test_helm_is_the_pinned_version_and_defaults_to_a_current_kubernetes(helm: Helm) -> None:
    # Built without helm's ldflags, helm would report no version and render for Kubernetes
    # v1.20, which the chart's kubeVersion (>=1.30) refuses: rendering without
    # --kube-version must work.
    version = helm.run("version", "--template", "{{ .Version }}").stdout.strip()
    go_mod = (ROOT / "tests" / "chart-tools" / "go.mod").read_text()
    pinned = re.search(r"helm\.sh/helm/v3 (v[0-9.]+)", go_mod)
    assert pinned and version == pinned.group(1), f"helm reports {version!r}, go.mod pins {pinned}"
    out = helm.run("template", "obs", str(CHART), "-f", str(DEFAULT), "--show-only", "templates/rbac.yaml")
    print(f"helm {version}: rendered without --kube-version")
    assert "kind: Role" in out.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=ci_id)
def test_lint_strict(helm: Helm, values: Path) -> None:
    res = helm.run("lint", "--strict", str(CHART), "--values", str(values), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 chart(s) failed" in res.stdout


def test_lint_rejects_the_defaults_without_a_resource(helm: Helm) -> None:
    # values.yaml alone is not installable: watch.resource is required.
    res = helm.run("lint", "--strict", str(CHART), check=False)
    assert res.returncode != 0
    assert "/watch/resource" in res.stdout + res.stderr


@pytest.mark.parametrize("version", VALIDATE_VERSIONS)
@pytest.mark.parametrize("values", CI_VALUES, ids=ci_id)
def test_every_rendered_object_validates_offline(helm: Helm, values: Path, version: str) -> None:
    objects = helm.render(values, extra=["--kube-version", version])
    checked, custom = [], []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            checked.append(obj["kind"])
        except kubernetes_validate.SchemaNotFoundError:
            # ServiceMonitor, PrometheusRule: no bundled schema; the API server checks them
            # against the prometheus-operator CRDs (test_chart_cluster.py).
            assert obj["apiVersion"].startswith("monitoring.coreos.com/"), obj["kind"]
            custom.append(obj["kind"])
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} at /{path}: {exc.message}")
    print(f"{ci_id(values)} @ {version}: {len(checked)} objects valid ({', '.join(sorted(checked))})"
          + (f"; left to the API server: {', '.join(custom)}" if custom else ""))
    assert "Deployment" in checked


def test_kubernetes_validate_catches_an_unknown_field(helm: Helm) -> None:
    # The check above is worth something only if a stray field fails it.
    deploy = find(helm.render(DEFAULT), "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, VALIDATE_VERSIONS[0], strict=True)


@pytest.mark.parametrize("values", CI_VALUES, ids=ci_id)
def test_objects_have_namespaces_and_no_wildcard_rules(helm: Helm, values: Path) -> None:
    for obj in helm.render(values, namespace="apps"):
        meta = obj["metadata"]
        if obj["kind"] in CLUSTER_SCOPED_KINDS:
            assert "namespace" not in meta, kinds([obj])
        else:
            assert meta.get("namespace"), f"{kinds([obj])} has no namespace"
        for rule in obj.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), f"{kinds([obj])}: wildcard in {rule}"


# -- values -> fastobs flags ---------------------------------------------------------------------


def test_default_arguments(helm: Helm) -> None:
    args = workload_container(helm.render(DEFAULT, namespace="apps"))["args"]
    assert args == [
        "pods", "--namespace=apps", "--selector=app=web", "--template={.status.phase}", "--workers=2",
        "--shutdown-grace=30s", "--kill-grace=5s", "--listen-addr=:11251", "--log-format=json",
        "--log-level=info", "--", "/etc/fastobs/scripts/act.sh",
    ]


def test_every_fastobs_setting_becomes_its_flag(helm: Helm) -> None:
    container = workload_container(helm.render(ALL_NAMESPACES))
    assert container["args"] == [
        "deployments.apps",  # "deploy" resolved, as kubectl does, to what the ClusterRole names
        "--all-namespaces",
        "--selector=tier in (web,api)",
        "--field-selector=metadata.namespace!=kube-system",
        "--resync-period=30m",
        "--watch-read-timeout=2m",
        "--template={{ .spec.replicas }}",
        "--output=go-template",
        "--allow-missing-template-keys=false",
        "--type-env-var=EVENT_TYPE",
        "--object-env-var=OBJECT",
        "--object-channel=file",
        "--object-file-env-var=OBJECT_FILE",
        "--delete=/etc/fastobs/scripts/sync.sh", "--delete=--delete",
        "--names=/etc/fastobs/scripts/known.sh",
        "--workers=4",
        "--concurrency=32",
        "--no-coalesce",
        "--timeout=2m",
        "--max-pending=1000000",  # not 1e+06: values files give helm floats
        "--maximum-errors=-1",
        "--retry-on-exit-code=75",
        "--retry-count=3",
        "--backoff-base=1s",
        "--backoff-cap=5m",
        "--backoff-attempts=8",
        "--output-mode=stream",
        "--quiet",
        "--shutdown-grace=60s",
        "--kill-grace=10s",
        "--listen-addr=:11251",
        "--log-format=text",
        "--log-level=debug",
        "--",
        "/etc/fastobs/scripts/sync.sh", "--verbose",
    ]
    assert container["resources"]["limits"] == {"memory": "1Gi"}


def test_the_rendered_arguments_parse_in_fastobs(helm: Helm) -> None:
    # fastobs's own parser accepts every argument list the chart renders: `fastobs ARGS
    # --help` would stop at the first flag it does not know, with a usage error.
    for values in CI_VALUES:
        args = workload_container(helm.render(values))["args"]
        flags = args[: args.index("--")] if "--" in args else args
        proc = subprocess.run([sys.executable, "-m", "fastobs", *flags, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{ci_id(values)}: fastobs {' '.join(flags)}: {proc.stderr}"


def test_extra_args_are_templates_and_go_before_the_command(helm: Helm) -> None:
    args = workload_container(helm.render(EXISTING))["args"]
    assert args[-5:] == [
        "--exit-after=24h", "--print-metrics-on-exit", "--request-timeout=8s", "--",
        "/etc/fastobs/scripts/register.sh",
    ]


def test_termination_grace_outlasts_the_shutdown_grace(helm: Helm) -> None:
    for values, grace, kill in ((DEFAULT, 30, 5), (ALL_NAMESPACES, 60, 10)):
        pod = find(helm.render(values), "Deployment")["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == grace + kill + 5


# -- RBAC ---------------------------------------------------------------------------------------


def rbac(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The RBAC objects by kind (the chart makes at most one of each)."""
    found = [o for o in objects if o["apiVersion"].startswith("rbac.")]
    by_kind = {o["kind"]: o for o in found}
    assert len(by_kind) == len(found), kinds(found)
    return by_kind


WATCH_VERBS = ["get", "list", "watch"]


def test_namespaced_default_is_one_role_with_exactly_the_watch_rule(helm: Helm) -> None:
    objects = helm.render(DEFAULT, namespace="apps")
    roles = rbac(objects)
    assert set(roles) == {"Role", "RoleBinding"}, "no cluster-wide object for a namespaced watch"
    assert roles["Role"]["metadata"]["namespace"] == "apps"
    assert roles["Role"]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": WATCH_VERBS}]
    binding = roles["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "obs-fastobs"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "obs-fastobs", "namespace": "apps"}]


def test_all_namespaces_is_a_cluster_role_on_the_resolved_group(helm: Helm) -> None:
    roles = rbac(helm.render(ALL_NAMESPACES, namespace="apps"))
    assert set(roles) == {"ClusterRole", "ClusterRoleBinding"}
    assert roles["ClusterRole"]["metadata"]["name"] == "apps-obs-fastobs"
    assert roles["ClusterRole"]["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": WATCH_VERBS}
    ]


def test_cluster_scoped_resource_gets_a_cluster_role_with_the_extra_rules(helm: Helm) -> None:
    objects = helm.render(CLUSTER_SCOPE, namespace="apps")
    roles = rbac(objects)
    assert set(roles) == {"ClusterRole", "ClusterRoleBinding"}
    assert roles["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": WATCH_VERBS},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["patch"]},
    ]
    # A cluster-scoped resource gets no --namespace.
    assert workload_container(objects)["args"][:2] == ["namespaces", "--workers=2"]


def test_custom_resource_in_another_namespace(helm: Helm) -> None:
    objects = helm.render(CRD, namespace="apps")
    roles = rbac(objects)
    assert set(roles) == {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    assert roles["Role"]["metadata"]["namespace"] == "widgets"
    assert roles["RoleBinding"]["metadata"]["namespace"] == "widgets"
    assert roles["RoleBinding"]["subjects"][0]["namespace"] == "apps"  # the ServiceAccount's
    assert roles["Role"]["rules"] == [
        {"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": WATCH_VERBS},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["widget-credentials"],
         "verbs": ["get"]},
    ]
    # extraClusterRules only: fastobs's own watch stays namespaced.
    assert roles["ClusterRole"]["rules"] == [
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}
    ]
    assert workload_container(objects)["args"][:2] == ["widgets.example.com", "--namespace=widgets"]


def test_custom_resource_declared_cluster_scoped(helm: Helm) -> None:
    objects = helm.render(CRD, sets={"watch.clusterScoped": True, "watch.namespace": ""})
    assert "ClusterRole" in rbac(objects) and "Role" not in rbac(objects)
    assert "--namespace" not in " ".join(workload_container(objects)["args"])


def test_existing_service_account_and_no_rbac(helm: Helm) -> None:
    objects = helm.render(EXISTING)
    assert not rbac(objects)
    assert not [o for o in objects if o["kind"] == "ServiceAccount"]
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "dns-observer"
    assert pod["containers"][0]["image"] == (
        "registry.example.com/platform/fastobs@sha256:" + "0" * 64
    )
    assert {"name": "scripts", "configMap": {"name": "dns-scripts", "defaultMode": 0o555}} in pod["volumes"]


# -- the script --------------------------------------------------------------------------------


def test_script_configmap_is_mounted_as_a_directory_and_rolls_the_pod(helm: Helm, tmp_path: Path) -> None:
    script = tmp_path / "act.sh"
    rendered = {}
    for version in ("one", "two"):
        script.write_text(f"#!/bin/sh\necho {version} \"$@\"\n")
        objects = helm.render(sets={"watch.resource": "configmaps"},
                              set_files={"script.files.act\\.sh": script})
        config_map = find(objects, "ConfigMap", "obs-fastobs-scripts")
        assert config_map["data"] == {"act.sh": script.read_text()}
        rendered[version] = find(objects, "Deployment")["spec"]["template"]
    pod = rendered["one"]["spec"]
    volume = {"name": "scripts", "configMap": {"name": "obs-fastobs-scripts", "defaultMode": 0o555}}
    assert volume in pod["volumes"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "scripts")
    assert mount == {"name": "scripts", "mountPath": "/etc/fastobs/scripts", "readOnly": True}  # no subPath
    before, after = (rendered[v]["metadata"]["annotations"]["checksum/scripts"] for v in ("one", "two"))
    print(f"checksum/scripts: {before[:12]}... -> {after[:12]}...")
    assert before != after


def test_baked_image_has_no_script_volume(helm: Helm) -> None:
    objects = helm.render(BAKED)
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert "annotations" not in find(objects, "Deployment")["spec"]["template"]["metadata"]
    assert pod["containers"][0]["image"] == "registry.example.com/platform/fastobs-inventory:1.4.2"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert {o["kind"] for o in objects} == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"}


# -- pod shape ----------------------------------------------------------------------------------


def test_one_replica_recreated_with_probes_and_a_writable_tmp(helm: Helm) -> None:
    deploy = find(helm.render(DEFAULT), "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    assert "helm.sh/chart" not in deploy["spec"]["selector"]["matchLabels"]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is True
    container = pod["containers"][0]
    assert "command" not in container, "the image's entrypoint (tini) must stay PID 1"
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 11251, "protocol": "TCP"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]


def test_a_group_of_replicas_rolls_with_its_pod_names_as_identities(helm: Helm) -> None:
    objects = helm.render(GROUP, namespace="apps")
    deploy = find(objects, "Deployment")
    assert deploy["spec"]["replicas"] == 3
    assert deploy["spec"]["strategy"] == {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = workload_container(objects)
    args = container["args"]
    flags = args[args.index("--log-level=info") + 1: args.index("--")]
    assert flags == ["--lease-name=obs-fastobs", "--lease-namespace=apps", "--identity=$(POD_NAME)",
                     "--buckets=16"]
    assert container["env"][0] == {"name": "POD_NAME",
                                   "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    # A standby is ready (a rolling update must go on), so the probes stay those of one pod.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_group_values_become_their_flags_and_one_pod_may_be_a_group(helm: Helm) -> None:
    sets = {"group.enabled": True, "group.leaseName": "reconcilers", "group.shardKey": "uid",
            "group.shardFilter": "server", "group.leaseDuration": "30s", "group.renewDeadline": "20s",
            "group.retryPeriod": "4s", "group.leaseKillGrace": "3s", "group.drainTimeout": "1m",
            "group.resyncOnStart": True}
    objects = helm.render(DEFAULT, namespace="apps", sets=sets)
    deploy = find(objects, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    args = workload_container(objects)["args"]
    flags = args[args.index("--log-level=info") + 1: args.index("--")]
    assert flags == ["--lease-name=reconcilers", "--lease-namespace=apps", "--identity=$(POD_NAME)",
                     "--buckets=1", "--shard-key=uid", "--shard-filter=server", "--lease-duration=30s",
                     "--renew-deadline=20s", "--retry-period=4s", "--lease-kill-grace=3s",
                     "--drain-timeout=1m", "--resync-on-start"]
    proc = subprocess.run([sys.executable, "-m", "fastobs", *args[: args.index("--")], "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_lease_role_is_in_the_release_namespace_and_covers_leases_only(helm: Helm) -> None:
    objects = helm.render(GROUP, namespace="apps")
    role = find(objects, "Role", "obs-fastobs-leases")
    assert role["metadata"]["namespace"] == "apps"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "list", "watch", "create", "update", "delete"]}]
    binding = find(objects, "RoleBinding", "obs-fastobs-leases")
    assert binding["metadata"]["namespace"] == "apps"
    assert binding["roleRef"]["name"] == "obs-fastobs-leases"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "obs-fastobs", "namespace": "apps"}]
    watch_role = find(objects, "Role", "obs-fastobs")
    assert watch_role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": WATCH_VERBS}]
    single = helm.render(DEFAULT, namespace="apps")
    assert [o for o in single if o["metadata"]["name"].endswith("-leases")] == []


def test_several_pods_outside_a_group_are_refused(helm: Helm) -> None:
    res = helm.template(DEFAULT, sets={"replicas": 2}, extra=["--set", "group.enabled=false"], check=False)
    assert res.returncode != 0
    message = "replicas > 1 needs group.enabled true or null: pods outside a group would each run every"
    assert f"{message} command" in res.stderr, res.stderr
    print(res.stderr.strip().splitlines()[-1])


def test_helm_test_pod_is_a_hook_on_the_service(helm: Helm) -> None:
    objects = helm.render(DEFAULT, namespace="apps")
    pod = find(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["args"][-1] == "http://obs-fastobs.apps.svc:11251"
    assert find(objects, "Service")["spec"]["ports"][0]["port"] == 11251
    assert pod["spec"]["restartPolicy"] == "Never"


# -- monitoring ---------------------------------------------------------------------------------

MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}


def test_monitoring_objects_are_off_by_default(helm: Helm) -> None:
    objects = helm.render(DEFAULT)
    assert not MONITORING_KINDS & {o["kind"] for o in objects}
    assert not [o for o in objects if o["kind"] == "ConfigMap" and "dashboard" in o["metadata"]["name"]]


def test_service_monitor_scrapes_the_metrics_service(helm: Helm) -> None:
    objects = helm.render(MONITORING, namespace="apps")
    monitor, service = find(objects, "ServiceMonitor"), find(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["apps"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("metrics", "/metrics", "30s")
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_prometheus_rule_is_the_deploy_rules_file(helm: Helm) -> None:
    spec = find(helm.render(MONITORING), "PrometheusRule")["spec"]
    source = yaml.safe_load(RULES.read_text())
    expected = []
    for group in source["groups"]:
        rules = [dict(r, labels={**r.get("labels", {}), "team": "platform"})
                 for r in group["rules"] if r.get("alert") != "FastobsQueueStuck"]
        expected.append(dict(group, rules=rules))
    assert spec["groups"] == expected
    # The alerts' own templates reach Prometheus untouched.
    assert any("{{ $labels.instance }}" in r["annotations"]["summary"] for r in spec["groups"][0]["rules"])
    alerts = sum(len(g["rules"]) for g in spec["groups"])
    print(f"PrometheusRule: {alerts} alerts from {RULES.relative_to(ROOT)}")


def test_dashboard_configmap_is_the_deploy_dashboard(helm: Helm) -> None:
    config_map = find(helm.render(MONITORING), "ConfigMap", "obs-fastobs-dashboard")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "fastobs"}
    assert config_map["data"]["fastobs-dashboard.json"] == DASHBOARD.read_text()
    assert len(DASHBOARD.read_bytes()) < 256 * 1024, "client-side apply stores it in an annotation"


def test_chart_files_are_links_to_the_single_source(helm: Helm, tmp_path: Path) -> None:
    # The chart reads the alert rules and the dashboard through symbolic links into deploy/:
    # no second copy exists to drift. `helm package` stores the linked contents.
    for name, target in (("fastobs-rules.yaml", RULES), ("fastobs-dashboard.json", DASHBOARD)):
        link = CHART / "files" / name
        assert link.is_symlink(), f"{link} must be a link to {target}, not a copy"
        assert link.resolve() == target.resolve()
    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("fastobs-*.tgz")
    with tarfile.open(archive) as tar:
        for name, target in (("fastobs-rules.yaml", RULES), ("fastobs-dashboard.json", DASHBOARD)):
            member = tar.extractfile(f"fastobs/files/{name}")
            assert member is not None and member.read() == target.read_bytes()
        names = tar.getnames()
    assert not [n for n in names if "/ci/" in n], "test values stay out of the package"


# -- values.schema.json and template failures ------------------------------------------------

BAD_VALUES = [
    ({"replicas": -1}, "/replicas"),
    ({"strategy.type": "BlueGreen"}, "/strategy/type"),
    ({"group.buckets": 512}, "/group/buckets"),
    ({"group.shardKey": "id"}, "/group/shardKey"),
    ({"group.leaseDuration": "15 s"}, "/group/leaseDuration"),
    ({"watch.namspace": "x"}, "namspace"),
    ({"logging.format": "xml"}, "/logging/format"),
    ({"engine.workers": 0}, "/engine/workers"),
    ({"engine.timeout": "5 minutes"}, "/engine/timeout"),
    ({"metrics.port": 70000}, "/metrics/port"),
    ({"watch.resource": "Pods"}, "/watch/resource"),
    ({"image.digest": "latest"}, "/image/digest"),
    ({"events.objectChannel": "pipe"}, "/events/objectChannel"),
    ({"script.defaultMode": 777}, "/script/defaultMode"),
    ({"extraArgs[0]": "exit-after=1h"}, "/extraArgs/0"),
    ({"rbac.extraRules[0].apiGroups[0]": "*", "rbac.extraRules[0].resources[0]": "pods",
      "rbac.extraRules[0].verbs[0]": "get"}, "/rbac/extraRules/0/apiGroups/0"),
    ({"rbac.extraRules[0].apiGroups[0]": "", "rbac.extraRules[0].resources[0]": "pods",
      "rbac.extraRules[0].verbs[0]": "*"}, "/rbac/extraRules/0/verbs/0"),
]


@pytest.mark.parametrize(("sets", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_rejects_a_wrong_value_naming_it(helm: Helm, sets: dict[str, Any], where: str) -> None:
    res = helm.template(DEFAULT, sets=sets, check=False)
    assert res.returncode != 0, f"{sets} was accepted"
    assert "schema" in res.stderr and where in res.stderr, res.stderr
    print(f"{sets}: {res.stderr.strip().splitlines()[-1].strip()}")


TEMPLATE_FAILURES = [
    ({"watch.resource": "deployments.v1.apps"}, "give the group without a version"),
    ({"watch.resource": "widgets"}, 'watch.resource "widgets" is not a built-in resource'),
    ({"script.existingConfigMap": "mine"},
     "script.files and script.existingConfigMap are mutually exclusive"),
    ({"serviceMonitor.enabled": True, "service.enabled": False},
     "serviceMonitor.enabled needs service.enabled"),
    ({"watch.clusterScoped": True}, "pods is namespaced; leave watch.clusterScoped unset"),
    ({"strategy.type": "RollingUpdate"}, "strategy RollingUpdate needs a group of replicas"),
]


@pytest.mark.parametrize(("sets", "message"), TEMPLATE_FAILURES, ids=[m[:30] for _, m in TEMPLATE_FAILURES])
def test_invalid_combinations_fail_with_a_clear_message(
    helm: Helm, sets: dict[str, Any], message: str
) -> None:
    res = helm.template(DEFAULT, sets=sets, check=False)
    assert res.returncode != 0 and message in res.stderr, res.stderr
    print(res.stderr.strip().splitlines()[-1])


def test_schema_is_self_contained() -> None:
    # Helm fetches a remote $ref while compiling the schema: offline installs would fail.
    schema = json.loads((CHART / "values.schema.json").read_text())
    refs = re.findall(r'"\$ref":\s*"([^"]*)"', json.dumps(schema))
    assert not [r for r in refs if not r.startswith("#")], refs


# -- README, versions ---------------------------------------------------------------------


def value_paths(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of values.yaml's settings (maps with content are walked into)."""
    if isinstance(node, dict) and node and prefix not in OPAQUE_VALUES:
        return [p for key, child in node.items() for p in value_paths(child, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


OPAQUE_VALUES = {f"{name}." for name in (
    "podSecurityContext", "securityContext", "livenessProbe", "readinessProbe", "startupProbe",
    "strategy", "dashboards.labels",
)}
"""Kubernetes objects passed through whole: documented as one value."""


def test_chart_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, re.M))
    paths = set(value_paths(values))
    assert paths - documented == set(), "values without a row in helm/fastobs/README.md"
    assert documented - paths == set(), "README rows for values that do not exist"


def test_chart_versions_follow_fastobs() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', project, re.M)
    assert version and chart["appVersion"] == version.group(1)
    assert chart["kubeVersion"] == f">={VALIDATE_VERSIONS[0]}-0"

