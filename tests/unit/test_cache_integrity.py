"""A cache entry's facts are covered by its checksum: an edited or damaged fact is recomputed,
never served as true."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pytest_erasure.cache import Cache, _safetensors_metadata


def rewrite(path: Path, change) -> None:
    """Write the entry at `path` again with the same tensors and `change(metadata)` applied:
    the tensors' own digest ("sha256") stays valid, only the metadata differs."""
    from safetensors.torch import load, save

    data = path.read_bytes()
    meta = dict(_safetensors_metadata(data))
    change(meta)
    path.write_bytes(save(load(data), metadata=meta))


def stored(cache: Cache, calls: list[int]):
    def compute():
        calls.append(1)
        return {"x": torch.arange(4.0)}, {"prompt": "a red circle", "degenerate": False,
                                          "losses": [0.5, 0.25]}
    return cache.tensors("t", {"k": 1}, compute)


def test_an_edited_fact_is_recomputed_not_served(tmp_path: Path) -> None:
    cache, calls = Cache(tmp_path), []
    _, facts = stored(cache, calls)
    path = cache.path("t", {"k": 1})

    def edit(meta: dict) -> None:
        edited = json.loads(meta["facts"])
        edited["degenerate"] = True
        meta["facts"] = json.dumps(edited)

    rewrite(path, edit)
    assert json.loads(_safetensors_metadata(path.read_bytes())["facts"])["degenerate"] is True
    assert cache._read(path, drop_damaged=False) is None
    tensors, again = stored(cache, calls)
    assert len(calls) == 2 and again == facts and again["degenerate"] is False
    assert torch.equal(tensors["x"], torch.arange(4.0))
    # The recomputed entry is stored anew and served from then on.
    stored(cache, calls)
    assert len(calls) == 2 and cache.hits == 1


def test_facts_are_checked_by_meaning_not_by_spacing(tmp_path: Path) -> None:
    cache, calls = Cache(tmp_path), []
    _, facts = stored(cache, calls)
    path = cache.path("t", {"k": 1})
    rewrite(path, lambda meta: meta.update(facts=json.dumps(json.loads(meta["facts"]), indent=2,
                                                            sort_keys=True)))
    assert stored(cache, calls)[1] == facts and len(calls) == 1


def test_an_entry_without_the_facts_checksum_is_recomputed(tmp_path: Path) -> None:
    """Entries written before the checksum covered the facts carry only the tensors' digest:
    their facts cannot be verified, so they are recomputed (once) rather than trusted."""
    cache, calls = Cache(tmp_path), []
    stored(cache, calls)
    path = cache.path("t", {"k": 1})
    rewrite(path, lambda meta: meta.pop("checksum"))
    stored(cache, calls)
    assert len(calls) == 2
    assert "checksum" in _safetensors_metadata(path.read_bytes())
