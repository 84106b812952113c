"""Synthetic Pods: realistic ~6 KB objects for the replay server and the loaders.

Where it sits: ``replay`` renders list items and watch events from :class:`PodTemplate`;
``loader`` posts the same bodies to a real apiserver.

Invariant: rendering one Pod is a single bytes ``%`` substitution into a pre-serialised
template, so the server is never the slower side of a benchmark; every rendered Pod
is valid JSON of 5.5-6.5 KB with labels, annotations, an ownerReference, two
managedFields entries (FieldsV1), a container with probes and volume mounts, a
projected volume, tolerations and four status conditions.
"""

from __future__ import annotations

import json
from typing import Any

# Placeholders are replaced by %-format fields; they must survive json.dumps unchanged.
_FIELDS = ("NS", "NAME", "UID", "RV", "HASH", "IP", "NODE", "GEN")


def pod_dict(*, with_status: bool = True) -> dict[str, Any]:
    """The Pod shape with placeholders; a realistic controller-created Pod."""
    fields_v1_spec = {
        "f:metadata": {
            "f:generateName": {},
            "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}, "f:tier": {}, "f:team": {}},
            "f:ownerReferences": {".": {}, 'k:{"uid":"7f7e0c1d-3b34-4f4e-9a57-2f1c1a0b9e11"}': {}},
        },
        "f:spec": {
            "f:containers": {
                'k:{"name":"app"}': {
                    ".": {},
                    "f:env": {
                        ".": {},
                        'k:{"name":"LOG_LEVEL"}': {".": {}, "f:name": {}, "f:value": {}},
                        'k:{"name":"POD_NAME"}': {".": {}, "f:name": {}, "f:valueFrom": {}},
                    },
                    "f:image": {},
                    "f:imagePullPolicy": {},
                    "f:livenessProbe": {".": {}, "f:httpGet": {}},
                    "f:name": {},
                    "f:ports": {".": {}, 'k:{"containerPort":8080,"protocol":"TCP"}': {}},
                    "f:readinessProbe": {".": {}, "f:httpGet": {}, "f:periodSeconds": {}},
                    "f:resources": {".": {}, "f:limits": {}, "f:requests": {}},
                    "f:terminationMessagePath": {},
                    "f:terminationMessagePolicy": {},
                    "f:volumeMounts": {".": {}, 'k:{"mountPath":"/etc/app"}': {}},
                }
            },
            "f:dnsPolicy": {},
            "f:enableServiceLinks": {},
            "f:restartPolicy": {},
            "f:schedulerName": {},
            "f:securityContext": {},
            "f:terminationGracePeriodSeconds": {},
            "f:volumes": {".": {}, 'k:{"name":"config"}': {".": {}, "f:configMap": {}, "f:name": {}}},
        },
    }
    fields_v1_status: dict[str, Any] = {
        "f:status": {
            "f:conditions": {
                t: {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}
                for t in (
                    'k:{"type":"ContainersReady"}',
                    'k:{"type":"Initialized"}',
                    'k:{"type":"PodScheduled"}',
                    'k:{"type":"Ready"}',
                )
            },
            "f:containerStatuses": {},
            "f:hostIP": {},
            "f:phase": {},
            "f:podIP": {},
            "f:podIPs": {".": {}, 'k:{"ip":"%(IP)s"}': {".": {}, "f:ip": {}}},
            "f:startTime": {},
        },
    }
    ts = "2026-11-29T10:00:00Z"
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "%(NAME)s",
            "generateName": "web-%(HASH)s-",
            "namespace": "%(NS)s",
            "uid": "%(UID)s",
            "resourceVersion": "%(RV)s",
            "generation": "%(GEN)s",
            "creationTimestamp": ts,
            "labels": {
                "app": "web",
                "pod-template-hash": "%(HASH)s",
                "tier": "frontend",
                "team": "payments",
                "env": "bench",
                "version": "v1.42.0",
                "app.kubernetes.io/part-of": "shop",
            },
            "annotations": {
                "kubernetes.io/config.seen": ts,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "checksum/config": "3f1a9c0e2b7d4c5f8a6e1d2b3c4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a",
                "bench.fastobs.dev/note": "synthetic object for throughput benchmarks",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-%(HASH)s",
                    "uid": "7f7e0c1d-3b34-4f4e-9a57-2f1c1a0b9e11",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": ts,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1_spec,
                },
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": ts,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1_status,
                    "subresource": "status",
                },
            ],
        },
        "spec": {
            "volumes": [
                {"name": "config", "configMap": {"name": "web-config", "defaultMode": 420}},
                {
                    "name": "kube-api-access",
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {
                                                "apiVersion": "v1",
                                                "fieldPath": "metadata.namespace",
                                            },
                                        }
                                    ]
                                }
                            },
                        ],
                    },
                },
            ],
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example.com/shop/web:v1.42.0",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [
                        {"name": "LOG_LEVEL", "value": "info"},
                        {
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
                        },
                    ],
                    "resources": {
                        "limits": {"cpu": "500m", "memory": "256Mi"},
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                    },
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/app", "readOnly": True},
                        {
                            "name": "kube-api-access",
                            "readOnly": True,
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                        },
                    ],
                    "livenessProbe": {
                        "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                        "timeoutSeconds": 1,
                        "periodSeconds": 10,
                        "successThreshold": 1,
                        "failureThreshold": 3,
                    },
                    "readinessProbe": {
                        "httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                        "timeoutSeconds": 1,
                        "periodSeconds": 5,
                        "successThreshold": 1,
                        "failureThreshold": 3,
                    },
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": "%(NODE)s",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
    }
    if with_status:
        pod["status"] = {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": ts}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "hostIP": "10.0.0.%(GEN)s",
            "podIP": "%(IP)s",
            "podIPs": [{"ip": "%(IP)s"}],
            "startTime": ts,
            "containerStatuses": [
                {
                    "name": "app",
                    "state": {"running": {"startedAt": ts}},
                    "lastState": {},
                    "ready": True,
                    "restartCount": 0,
                    "image": "registry.example.com/shop/web:v1.42.0",
                    "imageID": "registry.example.com/shop/web@sha256:"
                    "9b2c8f1e0d3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c",
                    "containerID": "containerd://%(UID)s%(HASH)s",
                    "started": True,
                }
            ],
            "qosClass": "Burstable",
        }
    return pod


class PodTemplate:
    """Renders Pod number ``i`` at resourceVersion ``rv`` as compact JSON bytes."""

    def __init__(self, *, with_status: bool = True, with_type_meta: bool = True) -> None:
        doc = pod_dict(with_status=with_status)
        if not with_type_meta:
            del doc["apiVersion"], doc["kind"]
        text = json.dumps(doc, separators=(",", ":"))
        # generation is an int in Kubernetes; the placeholder had to be a string to survive dumps.
        text = text.replace('"%(GEN)s"', "%(GEN)s")
        self._template = text.encode()
        for name in _FIELDS:
            assert b"%(" + name.encode() + b")s" in self._template or name == "GEN"

    def render(self, i: int, rv: int, namespace: str, gen: int = 1) -> bytes:
        return self._template % {
            b"NS": namespace.encode(),
            b"NAME": b"web-%08d" % i,
            b"UID": uid_for(i),
            b"RV": str(rv).encode(),
            b"HASH": b"%010x" % (i * 2654435761 % (1 << 40)),
            b"IP": b"10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255),
            b"NODE": b"node-%03d" % (i % 100),
            b"GEN": str(gen).encode(),
        }


def uid_for(i: int) -> bytes:
    return b"00000000-0000-4000-8000-%012d" % i


def pod_name(i: int) -> str:
    return f"web-{i:08d}"
