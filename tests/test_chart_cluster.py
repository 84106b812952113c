"""The Helm chart against the real kube-apiserver, and the chart's pod run from the built image.

* Every rendering of helm/fastobs/ci/*-values.yaml passes ``kubectl apply --dry-run=server
  --validate=strict --warnings-as-errors`` into namespaces labelled for the Pod Security
  ``restricted`` profile (the API server's own admission: warnings on pod templates become
  errors, and the helm test Pod is enforced), with the real prometheus-operator CRDs
  installed, so ServiceMonitor and PrometheusRule fields are validated too.
* ``helm install`` and ``helm upgrade`` against the cluster; ``kubectl auth can-i`` as the
  chart's ServiceAccount.
* The chart's pod without a kubelet (tests/pod_run.py): the rendered container, run from the
  image built by scripts/build-image with ``buildah run``, with a TokenRequest token of the
  chart's ServiceAccount, the cluster CA and the mounted script ConfigMap. It lists and
  watches real objects through the chart's RBAC, runs kubectl and jq in the script, serves
  /metrics, answers the chart's helm test pod, and drains on SIGTERM.

The API server has no controllers and no kubelet: Deployments get no pods, so nothing waits
for rollouts (never ``--wait``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pod_run
import pytest
import yaml
from chart_helm import (
    CHART,
    CI_VALUES,
    RESOURCES_TPL,
    ROOT,
    Helm,
    find,
    helm_or_skip,
    kinds,
    parse_manifests,
    resource_table,
    value_args,
)
from fastobs_run import free_port, http_get
from k8s_cluster import Cluster, KubeCluster
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.cluster

CRD_MODULE = ROOT / "tests" / "chart-tools" / "monitoring-crds"
CRD_FILES = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml")
PSS_LABELS = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
TEST_LABEL = "fastobs-test"


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return helm_or_skip(tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def image() -> str:
    return pod_run.built_image()


def ensure_namespace(k8s: KubeCluster, name: str) -> str:
    """A namespace labelled for Pod Security "restricted" (enforce, warn and audit)."""
    k8s.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": PSS_LABELS}})
    return name


def new_namespace(k8s: KubeCluster, stem: str) -> str:
    return ensure_namespace(k8s, f"{stem}-{secrets.token_hex(3)}")


@pytest.fixture(scope="module")
def monitoring_crds(k8s: KubeCluster) -> list[str]:
    """The prometheus-operator CRDs for ServiceMonitor and PrometheusRule, installed.

    They are the project's own generated CRDs, from the Go module
    github.com/prometheus-operator/prometheus-operator (version and hash pinned by
    tests/chart-tools/monitoring-crds/go.mod and go.sum), not hand-written stand-ins.
    """
    module_path = "github.com/prometheus-operator/prometheus-operator"
    res = subprocess.run(["go", "mod", "download", "-json", module_path],
                         cwd=CRD_MODULE, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, f"go mod download failed: {res.stdout}{res.stderr}"
    module = json.loads(res.stdout)
    crd_dir = Path(module["Dir"]) / "example" / "prometheus-operator-crd"
    names = []
    for name in CRD_FILES:
        k8s.kubectl("apply", "--server-side", "-f", str(crd_dir / name))
        names.append(name.removesuffix(".yaml").split("_", 1)[1] + ".monitoring.coreos.com")
    k8s.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    print(f"CRDs from prometheus-operator {module['Version']}: {', '.join(names)}")
    return names


# -- the built-in resource table ---------------------------------------------------------------


def test_builtin_resource_table_matches_the_api_server(k8s: KubeCluster, tmp_path: Path) -> None:
    groups = json.loads(k8s.kubectl("get", "--raw", "/apis").stdout)["groups"]
    # Other tests share this cluster and install CRDs of their own; the table is built-in only.
    crds = json.loads(k8s.kubectl("get", "customresourcedefinitions", "-o", "json").stdout)["items"]
    custom = {crd["spec"]["group"] for crd in crds}
    paths = ["/api/v1"] + [f"/apis/{g['preferredVersion']['groupVersion']}" for g in groups
                           if g["name"] not in custom]
    discovery = [json.loads(k8s.kubectl("get", "--raw", p).stdout) for p in paths]
    version = json.loads(k8s.kubectl("get", "--raw", "/version").stdout)["gitVersion"]
    expected = resource_table(discovery, version)
    if RESOURCES_TPL.read_text() != expected:
        fresh = tmp_path / RESOURCES_TPL.name
        fresh.write_text(expected)
        pytest.fail(f"{RESOURCES_TPL.relative_to(ROOT)} differs from the API server's discovery; "
                    f"the regenerated table is in {fresh} (copy it over)")
    print(f"{expected.count(chr(10))} lines, from {len(discovery)} API groups of Kubernetes {version}")


# -- server-side dry run with Pod Security admission ------------------------------------------


def dry_run(k8s: KubeCluster, manifests: str) -> subprocess.CompletedProcess[str]:
    return k8s.kubectl("apply", "--dry-run=server", "--validate=strict", "--warnings-as-errors", "-f", "-",
                       input=manifests, check=False)


def other_namespaces(objects: list[dict[str, Any]], release_ns: str) -> set[str]:
    namespaces = {o["metadata"].get("namespace", release_ns) for o in objects}
    return namespaces - {release_ns}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_every_rendering_passes_strict_server_dry_run_and_pod_security(
    helm: Helm, k8s: KubeCluster, monitoring_crds: list[str], values: Path
) -> None:
    ns = new_namespace(k8s, "dry")
    rendered = helm.template(values, namespace=ns).stdout
    objects = parse_manifests(rendered)
    for other in other_namespaces(objects, ns):
        ensure_namespace(k8s, other)  # the ci files' own namespaces (widgets, monitoring)
    res = dry_run(k8s, rendered)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    accepted = [line for line in res.stdout.splitlines() if "(server dry run)" in line]
    print(f"{values.name}: {len(accepted)} objects accepted in restricted namespace {ns}")
    assert len(accepted) == len(objects), res.stdout


def test_pod_security_admission_rejects_a_relaxed_pod(helm: Helm, k8s: KubeCluster) -> None:
    # The check above can fail: the same chart with one relaxed security setting is refused
    # (the Deployment's template by a warning made an error, the test Pod by enforcement).
    ns = new_namespace(k8s, "dry-relaxed")
    ci = CHART / "ci" / "default-values.yaml"
    for show in ("templates/deployment.yaml", "templates/tests/test-readyz.yaml"):
        rendered = helm.template(ci, namespace=ns, sets={"securityContext.allowPrivilegeEscalation": True},
                                 extra=["--show-only", show]).stdout
        res = dry_run(k8s, rendered)
        assert res.returncode != 0, f"{show} was accepted"
        assert re.search(r'violates? PodSecurity "restricted', res.stderr), res.stderr
        print(f"{show}: {next(line for line in res.stderr.splitlines() if 'PodSecurity' in line)[:220]}")


def test_strict_validation_rejects_an_unknown_field_in_a_custom_resource(
    helm: Helm, k8s: KubeCluster, monitoring_crds: list[str]
) -> None:
    # The CRDs are the real ones: a stray field in a ServiceMonitor is an error, not ignored.
    ns = new_namespace(k8s, "dry-crd")
    rendered = helm.template(CHART / "ci" / "monitoring-values.yaml", namespace=ns,
                             extra=["--show-only", "templates/servicemonitor.yaml"]).stdout
    res = dry_run(k8s, rendered.replace("  endpoints:", "  endpointz: []\n  endpoints:"))
    assert res.returncode != 0 and 'unknown field "spec.endpointz"' in res.stderr, res.stderr


# -- helm install, upgrade, NOTES, RBAC ---------------------------------------------------------


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str
    metrics_port: int
    notes: str


RELEASE_SCRIPT = """\
#!/bin/sh
# fastobs runs this as: act.sh NAMESPACE NAME COLOR (COLOR: the --template output).
set -eu
ns=$1 name=$2 color=$3
# The ServiceAccount's token, through the chart's rbac.extraRules (patch configmaps).
kubectl annotate configmap "$name" -n "$ns" "fastobs.example/seen=$color" --overwrite >/dev/null
jq -cn --arg key "$ns/$name" --arg color "$color" '{key: $key, color: $color}' >>/tmp/processed
if [ "$name" = orphan-maker ]; then
  # A background child that outlives this script (its parent, sh -c, exits at once).
  sh -c 'sleep 2 & echo $! >/tmp/orphan.pid' </dev/null >/dev/null 2>&1
fi
"""


def release_values(port: int) -> dict[str, Any]:
    return {
        "watch": {"resource": "cm", "labelSelector": f"{TEST_LABEL}=yes"},  # cm: resolved to configmaps
        "template": {"text": "{.data.color}"},
        "command": ["/etc/fastobs/scripts/act.sh"],
        "rbac": {"extraRules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}]},
        "engine": {"maximumErrors": 3},
        "logging": {"format": "text"},
        "metrics": {"port": port},  # the chroot shares the host's network: a free port
        # A bound on the pod's life: if this test run is killed, its container cannot outlive it long.
        "extraArgs": ["--exit-after=15m"],
    }


def install(helm: Helm, k8s: KubeCluster, name: str, ns: str, sets: dict[str, Any] | None = None,
            script: Path | None = None, command: str = "install", values: tuple[Path, ...] = ()) -> str:
    """``helm install`` (or ``upgrade``) of the chart; returns helm's output (NOTES included)."""
    set_files = {"script.files.act\\.sh": script} if script else None
    args = [command, name, str(CHART), "--namespace", ns, *value_args(values, sets, set_files)]
    return helm.run(*args, kubeconfig=k8s.kubeconfig).stdout


@pytest.fixture(scope="module")
def release(helm: Helm, k8s: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Release:
    """A release watching labelled configmaps, whose script patches them (rbac.extraRules).

    The image is the chart's default, which is what scripts/build-image tags."""
    ns = new_namespace(k8s, "release")
    work = tmp_path_factory.mktemp("release")
    script, values = work / "act.sh", work / "values.yaml"
    script.write_text(RELEASE_SCRIPT)
    port = free_port()
    values.write_text(yaml.safe_dump(release_values(port)))
    out = install(helm, k8s, "obs", ns, script=script, values=(values,))
    return Release("obs", ns, "obs-fastobs", port, out.split("NOTES:", 1)[1])


def test_install_creates_every_rendered_object(helm: Helm, k8s: KubeCluster, release: Release) -> None:
    manifest = parse_manifests(helm.run("get", "manifest", release.name, "-n", release.namespace,
                                        kubeconfig=k8s.kubeconfig).stdout)
    for obj in manifest:
        ns = ["-n", obj["metadata"]["namespace"]] if "namespace" in obj["metadata"] else []
        k8s.kubectl("get", obj["kind"].lower(), obj["metadata"]["name"], *ns)
    print(f"installed: {', '.join(kinds(manifest))}")
    assert {o["kind"] for o in manifest} >= {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service",
                                            "Deployment"}


def test_notes_say_what_is_watched_and_how_to_reach_metrics(release: Release) -> None:
    print(release.notes)
    ns, port = release.namespace, release.metrics_port
    assert f"observes configmaps in namespace {ns}, selector {TEST_LABEL}=yes." in release.notes
    assert "For each object it runs: /etc/fastobs/scripts/act.sh NAMESPACE NAME TEMPLATE-OUTPUT\n" in (
        release.notes)
    assert f"It may get, list and watch configmaps in {ns}, plus the rules in rbac.extraRules" in (
        release.notes)
    assert f"kubectl port-forward -n {ns} deploy/obs-fastobs {port}" in release.notes
    assert f"helm test -n {ns} obs" in release.notes
    assert "WARNING" not in release.notes


def test_notes_warn_about_a_missing_command_and_monitor_labels(
    helm: Helm, k8s: KubeCluster, monitoring_crds: list[str]
) -> None:
    out = helm.run("install", "notes", str(CHART), "--dry-run=client", "--namespace", "default",
                   "--set", "watch.resource=nodes", "--set", "serviceMonitor.enabled=true",
                   kubeconfig=k8s.kubeconfig).stdout
    notes = out.split("NOTES:", 1)[1]
    assert "observes nodes (cluster-scoped)." in notes
    assert "WARNING: no command is set" in notes
    assert "WARNING: serviceMonitor.additionalLabels is empty" in notes


def can_i(k8s: KubeCluster, sa: str, ns: str, *args: str) -> bool:
    res = k8s.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{ns}:{sa}", check=False)
    assert res.stdout.strip() in ("yes", "no"), res.stderr
    return res.stdout.strip() == "yes"


def test_service_account_may_read_its_resource_and_nothing_else(k8s: KubeCluster, release: Release) -> None:
    sa, ns = release.service_account, release.namespace
    other = new_namespace(k8s, "other")
    expected = {
        ("get", "configmaps", "-n", ns): True,
        ("list", "configmaps", "-n", ns): True,
        ("watch", "configmaps", "-n", ns): True,
        ("patch", "configmaps", "-n", ns): True,  # rbac.extraRules, for the script
        ("list", "configmaps", "-n", other): False,
        ("list", "configmaps", "--all-namespaces"): False,
        ("delete", "configmaps", "-n", ns): False,
        ("create", "configmaps", "-n", ns): False,
        ("get", "secrets", "-n", ns): False,
        ("list", "secrets", "-n", ns): False,
        ("list", "pods", "-n", ns): False,
        ("create", "pods", "-n", ns): False,
        ("list", "namespaces"): False,
        ("list", "nodes"): False,
        ("list", "serviceaccounts", "-n", ns): False,
    }
    got = {args: can_i(k8s, sa, ns, *args) for args in expected}
    for args, allowed in got.items():
        print(f"can-i {' '.join(args)}: {'yes' if allowed else 'no'}")
    assert got == expected


def test_cluster_scope_release_may_list_and_patch_namespaces_only(helm: Helm, k8s: KubeCluster) -> None:
    ns = new_namespace(k8s, "cluster-scope")
    install(helm, k8s, "ns-labeller", ns, values=(CHART / "ci" / "cluster-scope-values.yaml",))
    sa = "ns-labeller-fastobs"
    assert can_i(k8s, sa, ns, "watch", "namespaces")
    assert can_i(k8s, sa, ns, "patch", "namespaces")
    assert not can_i(k8s, sa, ns, "delete", "namespaces")
    assert not can_i(k8s, sa, ns, "list", "pods", "--all-namespaces")
    assert not can_i(k8s, sa, ns, "list", "secrets", "-n", ns)


def test_upgrade_with_a_changed_script_rolls_the_pod(helm: Helm, k8s: KubeCluster, tmp_path: Path) -> None:
    ns = new_namespace(k8s, "upgrade")
    script = tmp_path / "act.sh"
    templates = []
    for version in ("one", "two"):
        script.write_text(f"#!/bin/sh\necho {version} \"$@\"\n")
        install(helm, k8s, "up", ns, {"watch.resource": "pods", "command[0]": "/etc/fastobs/scripts/act.sh"},
                script, "install" if version == "one" else "upgrade")
        data = json.loads(k8s.kubectl("get", "configmap", "up-fastobs-scripts", "-n", ns, "-o", "json")
                          .stdout)
        assert data["data"]["act.sh"] == script.read_text()
        deploy = json.loads(k8s.kubectl("get", "deployment", "up-fastobs", "-n", ns, "-o", "json").stdout)
        templates.append(deploy["spec"]["template"]["metadata"]["annotations"]["checksum/scripts"])
    history = json.loads(helm.run("history", "up", "-n", ns, "-o", "json", kubeconfig=k8s.kubeconfig).stdout)
    assert [h["revision"] for h in history] == [1, 2]
    assert history[-1]["status"] == "deployed"
    print(f"checksum/scripts in the stored Deployment: {templates[0][:12]}... -> {templates[1][:12]}...")
    assert templates[0] != templates[1]
    helm.run("uninstall", "up", "-n", ns, kubeconfig=k8s.kubeconfig)
    gone = k8s.kubectl("get", "deployment,configmap,role", "-n", ns, "-l", "app.kubernetes.io/instance=up",
                       "-o", "name").stdout
    assert gone.strip() == ""


# -- a group of replicas ---------------------------------------------------------------------------

GROUP_SCRIPT = """\
#!/bin/sh
echo "$1/$2 $FASTOBS_IDENTITY $FASTOBS_BUCKET" >>"$GROUP_LOG"
"""


def owned_buckets(port: int) -> int:
    status, text = http_get(port, "/metrics")
    return int(metric(text, "fastobs_group_buckets_held", state="owned")) if status == 200 else -1


@pytest.mark.timeout(300)
def test_a_group_release_shares_the_work_under_its_own_service_account(
    helm: Helm, k8s: KubeCluster, tmp_path: Path
) -> None:
    """replicas: 2 with group.buckets: 4, installed: the ServiceAccount may use Leases in the
    release namespace and nowhere else, and two fastobs processes started with the rendered
    arguments (the pod name put in, as the kubelet does) and a token of that ServiceAccount
    share the buckets; SIGTERM to one hands its buckets to the other at once."""
    ns = new_namespace(k8s, "group")
    other = new_namespace(k8s, "other")
    script, values, log = tmp_path / "act.sh", tmp_path / "values.yaml", tmp_path / "runs.log"
    script.write_text(GROUP_SCRIPT)
    script.chmod(0o755)
    values.write_text(yaml.safe_dump({
        "replicas": 2, "group": {"buckets": 4}, "watch": {"resource": "configmaps"},
        "command": [str(script)], "logging": {"format": "text"}}))
    install(helm, k8s, "grp", ns, values=(values,))
    sa = "grp-fastobs"
    verbs = ("get", "list", "watch", "create", "update", "delete")
    expected: dict[tuple[str, ...], bool] = {(verb, "leases", "-n", ns): True for verb in verbs}
    expected |= {("patch", "leases", "-n", ns): False, ("list", "leases", "-n", other): False,
                 ("create", "leases", "-n", other): False, ("list", "leases", "--all-namespaces"): False,
                 ("create", "configmaps", "-n", ns): False}
    got = {args: can_i(k8s, sa, ns, *args) for args in expected}
    assert got == expected
    for i in range(12):
        k8s.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cm-{i:02d}"}},
                  namespace=ns)
    manifest = parse_manifests(helm.run("get", "manifest", "grp", "-n", ns,
                                        kubeconfig=k8s.kubeconfig).stdout)
    deploy = find(manifest, "Deployment")
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    token = k8s.kubectl("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
    kubeconfig = tmp_path / "kubeconfig"
    cluster = {"server": k8s.server, "certificate-authority": str(k8s.ca_file)}
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": ns}}]}))
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), GROUP_LOG=str(log))
    procs: list[tuple[subprocess.Popen[bytes], int]] = []

    def logs() -> str:
        return "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("*.stderr"))

    try:
        for pod in ("grp-fastobs-5d8c9-aaaaa", "grp-fastobs-5d8c9-bbbbb"):
            port = free_port()
            argv = [a.replace("$(POD_NAME)", pod) for a in args]
            argv = [f"--listen-addr=127.0.0.1:{port}" if a.startswith("--listen-addr=") else a for a in argv]
            with (tmp_path / f"{pod}.stderr").open("wb") as err:
                proc = subprocess.Popen([sys.executable, "-m", "fastobs", *argv], env=env,
                                        stdout=err, stderr=err, start_new_session=True)
            procs.append((proc, port))
        a, b = procs

        def shared() -> bool:
            return owned_buckets(a[1]) == 2 and owned_buckets(b[1]) == 2

        deadline = time.monotonic() + 90
        while not shared() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert shared(), logs()
        every = {f"{ns}/cm-{i:02d}" for i in range(12)}

        def ran() -> set[str]:
            return {line.split()[0] for line in log.read_text().splitlines()} if log.exists() else set()

        while ran() != every and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ran() == every, logs()
        leases = json.loads(k8s.kubectl("get", "leases", "-n", ns, "-l", "fastobs.io/lease-group=grp-fastobs",
                                        "-o", "json").stdout)["items"]
        print(f"{len(leases)} Leases in {ns}: " + ", ".join(
            f"{x['metadata']['name']}={x['spec'].get('holderIdentity') or ''}" for x in leases))
        forbidden = sum(metric(http_get(port, "/metrics")[1], "fastobs_api_errors_total", kind="forbidden")
                        for _, port in procs)
        assert forbidden == 0
        stopped = time.monotonic()
        a[0].send_signal(signal.SIGTERM)
        assert a[0].wait(60) == 0, logs()
        while owned_buckets(b[1]) != 4 and time.monotonic() < stopped + 30:
            time.sleep(0.1)
        took = time.monotonic() - stopped
        print(f"SIGTERM to one replica: it exited 0, the other owns all 4 buckets {took:.1f} s after")
        assert owned_buckets(b[1]) == 4, logs()
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# -- the chart's pod, run from the image ----------------------------------------------------------


def labelled_configmap(name: str, color: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {TEST_LABEL: "yes"}}, "data": {"color": color}}


def processed(run: pod_run.PodRun) -> list[dict[str, str]]:
    path = run.volumes["tmp"] / "processed"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def start_chart_pod(
    helm: Helm, k8s: KubeCluster, k8s_state: Cluster, image: str, release: Release, workdir: Path, **kw: Any
) -> tuple[pod_run.PodRun, list[dict[str, Any]]]:
    """The release's fastobs container, from its stored manifest, with a fresh TokenRequest token."""
    manifest = parse_manifests(helm.run("get", "manifest", release.name, "-n", release.namespace,
                                        kubeconfig=k8s.kubeconfig).stdout)
    pod = find(manifest, "Deployment")["spec"]["template"]["spec"]
    rendered_image = pod["containers"][0]["image"]
    assert rendered_image == image, f"the chart's default image {rendered_image} is not the built {image}"
    scripts = find(manifest, "ConfigMap", f"{release.name}-fastobs-scripts")
    token = k8s.kubectl("create", "token", release.service_account, "-n", release.namespace,
                        "--duration=1h").stdout.strip()
    run = pod_run.start(
        image, pod, "fastobs", workdir,
        config_maps={scripts["metadata"]["name"]: scripts["data"]},
        service_account=pod_run.ServiceAccountFiles(token, k8s.ca_file, release.namespace),
        api_server=("127.0.0.1", k8s_state.port),
        **kw,
    )
    return run, manifest


@pytest.mark.timeout(600)
def test_the_chart_pod_runs_from_the_image(
    helm: Helm, k8s: KubeCluster, k8s_state: Cluster, image: str, release: Release, tmp_path: Path
) -> None:
    ns = release.namespace
    before = {"alpha": "red", "beta": "green", "gamma": "blue"}
    for name, color in before.items():
        k8s.apply(labelled_configmap(name, color), namespace=ns)
    k8s.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unlabelled"}}, namespace=ns)
    run, manifest = start_chart_pod(helm, k8s, k8s_state, image, release, tmp_path / "pod")
    port = release.metrics_port
    try:
        print(f"buildah run {run.container}: {' '.join(run.argv)}")
        took = pod_run.wait_for(lambda: http_get(port, "/readyz")[0] == 200, 60, "/readyz", run)
        print(f"/readyz 200 after {took:.1f} s")
        assert http_get(port, "/livez")[0] == 200

        # Changes while running: a new object, an update, and the one whose script leaves an orphan.
        k8s.apply(labelled_configmap("delta", "black"), namespace=ns)
        k8s.apply(labelled_configmap("alpha", "white"), namespace=ns)
        k8s.apply(labelled_configmap("orphan-maker", "grey"), namespace=ns)
        want = {"alpha": "white", "beta": "green", "gamma": "blue", "delta": "black", "orphan-maker": "grey"}

        def annotated() -> dict[str, str]:
            items = json.loads(k8s.kubectl("get", "configmaps", "-n", ns, "-l", f"{TEST_LABEL}=yes",
                                           "-o", "json").stdout)["items"]
            seen = {i["metadata"]["name"]: i["metadata"].get("annotations") or {} for i in items}
            return {name: notes.get("fastobs.example/seen", "") for name, notes in seen.items()}

        def done() -> bool:
            # The script annotates first, then records the key: wait for both.
            latest = {p["key"]: p["color"] for p in processed(run)}
            return annotated() == want and latest == {f"{ns}/{n}": c for n, c in want.items()}

        took = pod_run.wait_for(done, 60, "every object annotated and recorded by the script", run)
        print(f"the script annotated {len(want)} objects (kubectl with the pod's token) in {took:.1f} s")
        keys = {p["key"] for p in processed(run)}
        assert keys == {f"{ns}/{n}" for n in want}, "only labelled objects, each through the script"

        status, text = http_get(port, "/metrics")
        assert status == 200
        ok = metric(text, "fastobs_commands_total", result="success")
        failed = metric(text, "fastobs_commands_total", result="failure")
        forbidden = metric(text, "fastobs_api_errors_total", kind="forbidden")
        print(f"/metrics: {ok:.0f} commands succeeded, {failed:.0f} failed, "
              f"{forbidden:.0f} forbidden API errors")
        assert ok >= len(want) + 1 and failed == 0 and forbidden == 0
        assert metric(text, "fastobs_build_info") == 1

        check_orphan_is_reaped(run)
        hooks = parse_manifests(helm.run("get", "hooks", release.name, "-n", ns,
                                         kubeconfig=k8s.kubeconfig).stdout)
        check_helm_test_pod(image, find(hooks, "Pod"), release, tmp_path / "helm-test")
        check_sigterm_drains(run)
    finally:
        run.close()


def check_orphan_is_reaped(run: pod_run.PodRun) -> None:
    pid_file = run.volumes["tmp"] / "orphan.pid"
    pod_run.wait_for(pid_file.exists, 30, "the orphan's pid file", run)
    orphan = int(pid_file.read_text())
    stat = pod_run.proc_stat(orphan)
    in_pod = run.processes()
    adopter = in_pod.get(stat[2], ("outside the container", 0))[0] if stat else "?"
    print(f"orphan pid {orphan} (sleep 2): state {stat[1] if stat else 'gone'}, parent {adopter}")
    # It must end reaped, never left a zombie: gone from /proc within a few seconds of exiting.
    pod_run.wait_for(lambda: pod_run.proc_stat(orphan) is None, 15, f"orphan {orphan} reaped", run)
    if stat is not None:
        assert stat[2] in in_pod, f"orphan {orphan} was adopted by pid {stat[2]}, outside the container"
    zombies = [pid for pid in run.processes() if (pod_run.proc_stat(pid) or ("", ""))[1] == "Z"]
    assert not zombies, f"zombies in the container: {zombies}"


def check_helm_test_pod(image: str, hook: dict[str, Any], release: Release, workdir: Path) -> None:
    # The chart's `helm test` pod, run the same way; the Service name resolves to this host,
    # where the fastobs container listens (host network).
    service = f"{release.name}-fastobs.{release.namespace}.svc"
    test = pod_run.start(image, hook["spec"], "readyz", workdir, config_maps={}, service_account=None,
                         api_server=("127.0.0.1", 1), add_hosts={service: "127.0.0.1"})
    try:
        code = test.wait(120)
        print(f"helm test pod: exit {code}: {test.output().strip()}")
        assert code == 0, test.output()
        assert f"GET http://{service}:{release.metrics_port}/readyz: 200" in test.output()
    finally:
        test.close()


def check_sigterm_drains(run: pod_run.PodRun) -> None:
    # The kubelet signals PID 1 only: tini must pass SIGTERM on, and fastobs exit 0 after draining.
    tini = run.pid_of("tini")
    started = time.monotonic()
    os.kill(tini, signal.SIGTERM)
    code = run.wait(60)
    print(f"SIGTERM to tini (pid {tini}): exit {code} after {time.monotonic() - started:.1f} s")
    assert code == 0, run.output()[-3000:]
    assert "Traceback" not in run.output()


@pytest.mark.timeout(300)
def test_the_chart_pod_fails_clearly_on_a_resource_its_role_does_not_allow(
    helm: Helm, k8s: KubeCluster, k8s_state: Cluster, image: str, release: Release, tmp_path: Path
) -> None:
    def secrets_instead(args: list[str]) -> list[str]:
        assert args[0] == "configmaps"
        return ["secrets", *args[1:]]

    run, _ = start_chart_pod(helm, k8s, k8s_state, image, release, tmp_path / "pod",
                             args_filter=secrets_instead)
    try:
        code = run.wait(120)
        out = run.output()
    finally:
        run.close()
    lines = [line for line in out.splitlines() if "forbidden" in line or line.startswith("error:")]
    print(f"exit {code}; " + "\n".join(lines[-3:]))
    assert code == 255, out
    who = rf'User "system:serviceaccount:{release.namespace}:{release.service_account}"'
    assert re.search(rf"secrets is forbidden: {who} cannot list", out), out
    assert "error: Maximum list errors of 3 reached, exiting" in out
    assert "Traceback" not in out

