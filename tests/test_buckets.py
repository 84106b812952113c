"""Bucket hash ranges: FNV-1a-64 as Go's hash/fnv, the KEP-5866 range form, and agreement with
the apiserver's own sharding code (a small Go program built from k8s.io/apiserver)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastobs.buckets import (
    NOTHING,
    SPACE,
    Bucketer,
    bucket_of,
    bucket_range,
    fnv1a64,
    hex_bound,
    merged_ranges,
    mix64,
    shard_selector,
)

ORACLE = Path(__file__).parent / "data" / "sharding" / "oracle"


def test_fnv1a64_matches_go_hash_fnv_vectors() -> None:
    """Vectors from Go's hash/fnv tests (golden64a) and the design study."""
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"ab") == 0x089C4407B545986A
    assert fnv1a64(b"abc") == 0xE71FA2190541574B


@given(st.integers(min_value=0, max_value=SPACE - 1), st.integers(min_value=1, max_value=256))
@settings(max_examples=2000)
def test_every_hash_lies_in_the_range_of_its_bucket(h: int, buckets: int) -> None:
    b = bucket_of(h, buckets)
    start, end = bucket_range(b, buckets)
    assert 0 <= b < buckets
    assert start <= h < end


@pytest.mark.parametrize("buckets", [1, 2, 3, 7, 16, 100, 255, 256])
def test_ranges_partition_the_hash_space_and_their_edges_land_in_their_bucket(buckets: int) -> None:
    previous_end = 0
    for b in range(buckets):
        start, end = bucket_range(b, buckets)
        assert start == previous_end and start < end
        assert bucket_of(start, buckets) == b
        assert bucket_of(end - 1, buckets) == b
        if start:
            assert bucket_of(start - 1, buckets) == b - 1
        previous_end = end
    assert previous_end == SPACE


def test_selectors_are_spelled_as_the_api_documents_them() -> None:
    """The 2- and 4-shard splits of ListOptions.shardSelector's documentation, verbatim."""
    f = "shardRange(object.metadata.uid"
    assert shard_selector([0], 2, "uid") == f"{f}, '0x0000000000000000', '0x8000000000000000')"
    assert shard_selector([1], 2, "uid") == f"{f}, '0x8000000000000000', '0x10000000000000000')"
    assert shard_selector([2], 4, "uid") == f"{f}, '0x8000000000000000', '0xc000000000000000')"
    # Adjacent buckets merge into one range; others are joined with ||.
    assert shard_selector([0, 1, 3], 4, "namespace") == (
        "shardRange(object.metadata.namespace, '0x0000000000000000', '0x8000000000000000') || "
        "shardRange(object.metadata.namespace, '0xc000000000000000', '0x10000000000000000')")
    assert merged_ranges(range(16), 16) == [(0, SPACE)]
    # No bucket: the narrowest range the server accepts.
    assert shard_selector([], 8, "uid") == f"{f}, '{hex_bound(NOTHING[0])}', '{hex_bound(NOTHING[1])}')"
    with pytest.raises(ValueError, match="cannot filter"):
        shard_selector([0], 2, "name")


def test_the_shard_key_picks_what_is_hashed() -> None:
    ns_name = Bucketer(64, "name").bucket("ns/a", "ns", "u1")
    assert ns_name == bucket_of(mix64(fnv1a64(b"ns/a")), 64)
    assert Bucketer(64, "uid").bucket("ns/a", "ns", "u1") == bucket_of(fnv1a64(b"u1"), 64)
    assert Bucketer(64, "namespace").bucket("ns/a", "ns", "u1") == bucket_of(fnv1a64(b"ns"), 64)
    assert Bucketer(1, "uid").bucket("ns/a", "ns", "u1") == 0


# -- against the apiserver's own code -----------------------------------------------------


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """k8s.io/apiserver's sharding parser and k8s.io/apimachinery's hash, built into a program."""
    if shutil.which("go") is None:
        pytest.skip("the Go toolchain is not installed")
    binary = tmp_path_factory.mktemp("sharding-oracle") / "oracle"
    done = subprocess.run(
        ["go", "build", "-o", str(binary), "."], cwd=ORACLE, capture_output=True, text=True,
        env={**os.environ, "GOFLAGS": "-mod=mod"}, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return binary


def _ask(oracle: Path, requests: list[dict[str, str]]) -> list[dict[str, object]]:
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    done = subprocess.run([str(oracle)], input=lines, capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_hashes_match_the_apiservers(oracle: Path) -> None:
    rng = random.Random(7)
    values = ["", "a", "default", "kube-system", "ns/name", "ünïcødé/☃"]
    values += [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(2000)]
    answers = _ask(oracle, [{"hash": v} for v in values])
    mismatches = [(v, a) for v, a in zip(values, answers, strict=True)
                  if a["hash"] != f"{fnv1a64(v.encode()):016x}"]
    print(f"{len(values)} values hashed by fastobs and by the apiserver's HashField: "
          f"{len(mismatches)} differ")
    assert mismatches == []


@pytest.mark.parametrize("buckets", [2, 3, 16, 100, 256])
def test_bucket_membership_matches_the_apiservers_selector(oracle: Path, buckets: int) -> None:
    """For random bucket sets, the apiserver's parsed selector matches exactly the objects fastobs
    puts in those buckets (uid and namespace keys), and accepts every selector fastobs writes."""
    rng = random.Random(buckets)
    requests, expected = [], []
    for _ in range(40):
        owned = rng.sample(range(buckets), rng.randint(1, buckets))
        for key, field in (("uid", "uid"), ("namespace", "namespace")):
            selector = shard_selector(owned, buckets, key)  # type: ignore[arg-type]
            bucketer = Bucketer(buckets, key)  # type: ignore[arg-type]
            for _ in range(25):
                value = str(uuid.UUID(int=rng.getrandbits(128))) if field == "uid" \
                    else f"ns-{rng.getrandbits(40)}"
                requests.append({"selector": selector, field: value})
                expected.append(bucketer.bucket(f"{value}/x", value, value) in owned)
    answers = _ask(oracle, requests)
    errors = [a for a in answers if "error" in a]
    assert errors == []
    wrong = sum(1 for a, want in zip(answers, expected, strict=True) if a["match"] != want)
    print(f"B={buckets}: {len(requests)} (selector, object) pairs, {wrong} disagree with the apiserver")
    assert wrong == 0


def test_the_apiserver_rejects_what_it_should(oracle: Path) -> None:
    """The form fastobs writes is the one the parser demands: 16 hex digits, 2^64 spelled out."""
    answers = _ask(oracle, [
        {"selector": "shardRange(object.metadata.uid, '0x0', '0x8000000000000000')"},
        {"selector": "shardRange(object.metadata.name, '0x0000000000000000', '0x8000000000000000')"},
        {"selector": shard_selector([3], 4, "uid"), "uid": "x"},
    ])
    assert "16-digit" in str(answers[0]["error"])
    assert "unsupported field path" in str(answers[1]["error"])
    assert "error" not in answers[2]


@pytest.mark.parametrize("pattern", ["default/web-{}", "apps/pod-{:04x}", "bench-ns/k{:05d}", "{}"])
def test_names_that_differ_only_in_a_suffix_spread_over_every_bucket(pattern: str) -> None:
    """StatefulSet-like names (web-0, web-1, ...) in one namespace: FNV-1a's high bits barely
    change with the last characters, so its bare ranges put 500 such names into 1 to 4 of 16
    buckets; mixed, every bucket gets its share."""
    from collections import Counter

    names = [pattern.format(i) for i in range(1600)]
    counts = Counter(Bucketer(16, "name").bucket(n, "", "") for n in names)
    bare = Counter(bucket_of(fnv1a64(n.encode()), 16) for n in names)
    print(f"{pattern}: mixed {min(counts.values())}..{max(counts.values())} per bucket in {len(counts)} "
          f"buckets; bare FNV-1a ranges: {len(bare)} buckets")
    assert len(counts) == 16
    assert min(counts.values()) >= 100 * 0.6 and max(counts.values()) <= 100 * 1.4
