"""Feature gates for the test and dev clusters (alpha APIs such as ShardedListAndWatch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import k8s_cluster as kc
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gates_parse_and_render_as_kube_apiserver_takes_them() -> None:
    gates = kc.parse_feature_gates("ShardedListAndWatch=true, WatchList=false,Foo")
    assert gates == {"ShardedListAndWatch": True, "WatchList": False, "Foo": True}
    expected = "--feature-gates=Foo=true,ShardedListAndWatch=true,WatchList=false"
    assert kc.feature_gates_args(gates) == [expected]
    assert kc.feature_gates_args({}) == []
    for bad in ("A=maybe", "=true", "a-b=true"):
        with pytest.raises(ValueError, match="bad feature gate"):
            kc.parse_feature_gates(bad)


def test_dev_cluster_refuses_a_malformed_gate_before_starting_anything(tmp_path: Path) -> None:
    env = {**os.environ, "FASTOBS_DEV_CLUSTER_DIR": str(tmp_path / "dev")}
    argv = [sys.executable, str(ROOT / "scripts" / "dev-cluster"), "up", "--feature-gates", "X=maybe"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 2
    assert "bad feature gate 'X=maybe'" in done.stderr
    assert not (tmp_path / "dev" / "state.json").exists()


def test_a_cluster_records_its_gates(tmp_path: Path) -> None:
    cluster = kc.Cluster(state_dir=tmp_path, data_dir=tmp_path, feature_gates={"ShardedListAndWatch": True})
    cluster.save()
    loaded = kc.Cluster.load(tmp_path)
    assert loaded is not None and loaded.feature_gates == {"ShardedListAndWatch": True}
    assert "--feature-gates=ShardedListAndWatch=true" in kc._apiserver_args(loaded)
