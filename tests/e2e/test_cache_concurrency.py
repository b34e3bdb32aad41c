"""Two processes sharing one cache folder at once never corrupt it and never compute an entry
twice.

Real processes: two Python workers import the cache, wait at a start line (a file the test
creates once both are ready), then ask for overlapping keys, one in the other's reverse order.
Every computation appends a line (worker, key, start and end time) to a log while the worker
holds that key's lock; the test counts the lines per key, checks the two workers were computing
at the same time, and reads every entry back through its checksum.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pytest_erasure.cache import Cache

WORKER = r"""
import json, os, sys, time
from pathlib import Path

import pytest
import torch

from pytest_erasure.cache import Cache

root, log, go, name, first, last, order = sys.argv[1:]
keys = list(range(int(first), int(last)))
if order == "reverse":
    keys.reverse()
cache = Cache(Path(root))
Path(root, f"ready-{name}").touch()
while not os.path.exists(go):
    time.sleep(0.005)


def record(kind, key, began):
    with open(log, "a") as f:  # one short O_APPEND write per line
        f.write(json.dumps({"worker": name, "kind": kind, "key": key, "began": began,
                            "ended": time.time()}) + "\n")


def compute_missing(indices):
    out = []
    for i in indices:
        began = time.time()
        time.sleep(0.04)  # long enough that the other worker asks meanwhile
        key = keys[i]
        out.append(({"value": torch.arange(64, dtype=torch.float32) * key}, {"key": key}))
        record("tensors", key, began)
    return out


entries = cache.get_or_compute_many("t", [{"k": k} for k in keys], compute_missing)
assert [facts["key"] for _, facts in entries] == keys
assert all(torch.equal(t["value"], torch.arange(64, dtype=torch.float32) * k)
           for (t, _), k in zip(entries, keys))
hits, misses = cache.hits, cache.misses


def json_value(key):
    began = time.time()
    time.sleep(0.02)
    record("json", key, began)
    return {"key": key, "square": key * key}


values = [cache.json("j", {"k": k}, lambda k=k: json_value(k)) for k in keys]
assert values == [{"key": k, "square": k * k} for k in keys]
print(json.dumps({"hits": hits, "misses": misses, "json_hits": cache.hits - hits,
                  "json_misses": cache.misses - misses}))
"""


def test_two_processes_on_one_cache_compute_each_entry_once(tmp_path: Path) -> None:
    root, log, go = tmp_path / "cache", tmp_path / "computed.log", tmp_path / "go"
    root.mkdir()
    workers = {"a": (0, 24, "forward"), "b": (8, 32, "reverse")}  # keys 8..23 overlap
    procs = {name: subprocess.Popen(
        [sys.executable, "-c", WORKER, str(root), str(log), str(go), name, str(first), str(last),
         order], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (first, last, order) in workers.items()}
    deadline = time.time() + 120
    while not all((root / f"ready-{n}").exists() for n in workers):
        assert time.time() < deadline and all(p.poll() is None for p in procs.values()), \
            {n: p.communicate() for n, p in procs.items() if p.poll() is not None}
        time.sleep(0.01)
    go.touch()
    counts = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        counts[name] = json.loads(out.strip().splitlines()[-1])

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for kind in ("tensors", "json"):
        computed = sorted(line["key"] for line in lines if line["kind"] == kind)
        assert computed == list(range(32)), (kind, computed)  # every key, each exactly once
    assert sum(c["misses"] for c in counts.values()) == 32
    assert sum(c["hits"] for c in counts.values()) == 16  # the overlap, read not recomputed
    assert sum(c["json_misses"] for c in counts.values()) == 32
    assert sum(c["json_hits"] for c in counts.values()) == 16

    # the two were computing at the same time (else this test proved nothing)
    spans = {n: [(line["began"], line["ended"]) for line in lines
                 if line["worker"] == n and line["kind"] == "tensors"] for n in workers}
    a_from, a_to = min(s for s, _ in spans["a"]), max(e for _, e in spans["a"])
    b_from, b_to = min(s for s, _ in spans["b"]), max(e for _, e in spans["b"])
    assert a_from < b_to and b_from < a_to, spans

    # every entry whole and checksummed, nothing half-written left behind
    cache = Cache(root)
    for k in range(32):
        tensors, facts = cache._read(cache.path("t", {"k": k}), drop_damaged=False)
        assert facts == {"key": k}
        assert torch.equal(tensors["value"], torch.arange(64, dtype=torch.float32) * k)
        assert cache.read_json("j", {"k": k}) == {"key": k, "square": k * k}
    assert len(list(root.rglob("*.safetensors"))) == 32
    assert len(list(root.rglob("*.json"))) == 32
    assert not list(root.rglob("*.tmp"))


def test_a_damaged_entry_is_recomputed_once(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    calls: list[list[int]] = []

    def compute(indices: list[int]):
        calls.append(indices)
        return [({"x": torch.full((3,), float(i))}, {"i": i}) for i in indices]

    keys = [{"k": 0}, {"k": 1}, {"k": 0}]  # a repeated key is computed once
    first = cache.get_or_compute_many("t", keys, compute)
    assert calls == [[0, 1]] and [f["i"] for _, f in first] == [0, 1, 0]
    path = cache.path("t", {"k": 1})
    path.write_bytes(path.read_bytes()[:-5])  # damaged: fails to load or its checksum
    again = cache.get_or_compute_many("t", keys, compute)
    assert calls == [[0, 1], [1]]
    assert [f["i"] for _, f in again] == [0, 1, 0]
    assert (cache.hits, cache.misses) == (1, 3)

    json_path = cache.path("j", "v", suffix=".json")
    assert cache.json("j", "v", lambda: {"n": (1, 2)}) == {"n": [1, 2]}  # normalised
    json_path.write_text(json_path.read_text().replace("1", "7"))
    assert cache.read_json("j", "v") is None and not json_path.exists()


def test_no_cache_computes_everything(tmp_path: Path) -> None:
    cache = Cache(None)
    out = cache.get_or_compute_many("t", [1, 2], lambda idx: [({"x": torch.ones(1)}, {})
                                                              for _ in idx])
    assert len(out) == 2 and cache.misses == 2


AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
COUNTING = '''
import json, os

import pytest_erasure.generate as generation

_real = generation.generate


def generate(pipe, inputs, *args, **kwargs):
    """Every image this audit computes: the session calls it under the keys' locks."""
    out = _real(pipe, inputs, *args, **kwargs)
    with open(os.environ["ERASURE_COMPUTED_LOG"], "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "n": len(inputs)}) + "\\n")
    return out


generation.generate = generate
'''


@pytest.mark.slow
def test_two_audits_at_once_on_one_cache(tiny_world: dict[str, Path], tmp_path: Path) -> None:
    """Two real pytest audits of the tiny world, started together on one cache folder: the
    images they share are computed once in all, and both report the same images."""
    import os

    cache, log = tmp_path / "cache", tmp_path / "computed.log"
    (tmp_path / "test_audit.py").write_text(AUDIT)
    (tmp_path / "conftest.py").write_text(COUNTING)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ERASURE_COMPUTED_LOG": str(log)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['erased']}",
         f"--concepts={tiny_world['concepts']}", f"--erasure-cache={cache}",
         f"--erasure-report={tmp_path / f'report-{k}'}", "--samples=16", "--steps=4",
         "--batch-size=4", "--scenarios=baseline,text,retention"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for k in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode in (0, 1), out  # cases may fail; nothing may crash

    computed = [json.loads(line) for line in log.read_text().splitlines()]
    images = list((cache / "image").rglob("*.safetensors"))
    assert images and sum(c["n"] for c in computed) == len(images)  # each image once in all
    assert not list(cache.rglob("*.tmp"))
    store = Cache(cache)
    assert all(store._read(p, drop_damaged=False) is not None for p in images)
    reports = [json.loads((tmp_path / f"report-{k}" / "report.json").read_text())
               for k in range(2)]
    digests = [{c["case_id"]: c["facts"]["image_sha256"] for c in r["cases"]} for r in reports]
    assert digests[0] == digests[1] and len(digests[0]) == 3
