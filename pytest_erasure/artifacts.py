"""What the attacks found, kept as portable files (`--erasure-artifacts=DIR`) and replayed
against another model without searching (`--erasure-replay=DIR`).

Every attack carries its findings across releases the same way: a file per finding, each with
its sha256, the case, the model it was found on (content fingerprint) and the settings it was
found with, listed in `manifest.json`. The kinds (the manifest entry's `kind`, one replay
scenario each, `scenarios/replay.py`):

- `embedding`: a learned embedding in diffusers' textual-inversion format, `{token:
  (num_vectors, D)}`, which `pipe.load_textual_inversion(path)` reads as it is;
- `latents`: inverted latents, `{"latents": (N, 4, h, w)}`;
- `prompts`: a JSON `{"prompts": [...]}` of the adversarial and fuzz prompts a search found;
- `probe`: a JSON `{"probe": scenario, "tries": [...]}` of the "When Are Concepts Erased?"
  probes' findings: the kept (best) try of every successful search (noise: prompt, seed, eta
  and noise scale; completion: prompt, seed, the standard model's hand-over step; inpainting:
  prompt, seed, the hole in latent cells and the reference image by index and digest), each
  enough to redraw its image on a model with no search;
- fine-tuning attacks' LoRAs travel as files too (their scenario's `findings`).

Replaying reads the manifest, checks every file's sha256 (a file changed since export is
refused) and the token width the embeddings were made for against the standard model's text
encoder (read from its config, nothing loaded), and registers one replay scenario per exported
kind of finding (`scenarios/replay.py`).

This module imports no torch: the manifest is checked before any model loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.errors import ErasureInputError

if TYPE_CHECKING:
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.records import AuditRecord, CaseResult

SCHEMA = "pytest-erasure/artifacts"
VERSION = 1
MANIFEST = "manifest.json"
REPLAY = "--erasure-replay"


def token_width(standard_model: Path) -> int | None:
    """The text encoder's width (hidden_size) of a diffusers folder, from its config."""
    try:
        config = json.loads((Path(standard_model) / "text_encoder" / "config.json")
                            .read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    width = config.get("hidden_size") if isinstance(config, dict) else None
    return int(width) if isinstance(width, int) else None


# -- export ------------------------------------------------------------------------------------

def findings(case: CaseResult) -> list[dict[str, Any]]:
    """What one erasure case's attack found, as its scenario declares it (`Scenario.findings`):
    [{"kind", "name", "source" (a file to copy) or "prompts", ...}]."""
    from pytest_erasure.scenarios.base import registry

    scenario = registry().get(case.scenario)
    return scenario.findings(case) if scenario is not None else []


def export(record: AuditRecord, config: AuditConfig, folder: Path) -> Path:
    """Write every finding of the audit's erasure cases into `folder` with `manifest.json`;
    returns the manifest's path."""
    from pytest_erasure.cache import file_sha256

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    models = {role: record.model_id(role) for role in ("standard", "erased")}
    for case in record.cases:
        if case.kind != "erasure" or case.error:
            continue
        for found in findings(case):
            target = folder / case.case_id
            target.mkdir(parents=True, exist_ok=True)
            if "source" in found:  # a file (an embedding, latents); else prompts
                source = Path(found.pop("source"))
                if not source.is_file():
                    continue
                file = target / f"{found['name']}.safetensors"
                shutil.copyfile(source, file)
            else:  # a JSON finding: prompts, or a probe's settings ("data")
                body = ({"prompts": found.pop("prompts")} if "prompts" in found
                        else found.pop("data"))
                file = target / f"{found['name']}.json"
                file.write_text(json.dumps(body, indent=2, ensure_ascii=False, default=str)
                                + "\n", encoding="utf-8")
            role = found.get("found_through") or "standard"
            entries.append({
                "id": f"{case.case_id}/{found['name']}", "case": case.case_id,
                "concept": case.concept, "scenario": case.scenario, **found,
                "file": str(file.relative_to(folder)), "sha256": file_sha256(file),
                "found_on": {"role": role, "model": models.get(role)},
                "case_crr": case.rate.crr if case.rate.n else None})
    manifest = {
        "schema": SCHEMA, "version": VERSION, "run_id": record.run_id,
        "started": record.started,
        "protocol": (record.comparability or {}).get("protocol"),
        "token_width": token_width(config.standard_model),
        "models": models,
        "settings": (record.comparability or {}).get("settings"),
        "artifacts": entries,
    }
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n",
                    encoding="utf-8")
    return path



# -- replay ------------------------------------------------------------------------------------

def read_manifest(folder: Path, standard_model: Path) -> dict[str, Any]:
    """The manifest of an exported folder, every file checked against its sha256 and the
    embeddings' token width against the standard model's text encoder; a usage error naming
    the first problem, before any model loads."""
    from pytest_erasure.cache import file_sha256

    folder = Path(folder)
    what = f"{REPLAY} {folder}"
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise ErasureInputError(what, f"holds no readable {MANIFEST}",
                                "give a folder --erasure-artifacts wrote") from None
    except ValueError as error:
        raise ErasureInputError(what, f"has a {MANIFEST} that is not JSON ({error})",
                                "give a folder --erasure-artifacts wrote") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA \
            or not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise ErasureInputError(what, f"has a {MANIFEST} that is not a {SCHEMA} v{VERSION} "
                                "manifest", "give a folder --erasure-artifacts wrote")
    entries = manifest.get("artifacts") or []
    width = token_width(standard_model)
    for entry in entries:
        file = (folder / entry["file"]).resolve()
        if not file.is_relative_to(folder.resolve()) or not file.is_file():
            raise ErasureInputError(what, f"lacks {entry['file']} ({entry['id']})",
                                    "copy the whole folder --erasure-artifacts wrote")
        if file_sha256(file) != entry.get("sha256"):
            raise ErasureInputError(what, f"has {entry['file']} changed since it was exported "
                                    "(sha256 differs from the manifest's)",
                                    "export the artifacts again, or restore the file")
        if entry.get("token"):  # an embedding: made for one token width
            made_for = manifest.get("token_width")
            if width is not None and made_for is not None and made_for != width:
                raise ErasureInputError(
                    what, f"holds embeddings made for a text encoder of width {made_for} "
                    f"({entry['id']}), but the standard model's is {width}",
                    "replay artifacts exported from a model of this architecture")
    return manifest


def replay_scenarios(config: AuditConfig) -> dict[str, Any]:
    """One replay scenario per (scenario, kind) of exported findings, by id."""
    from pytest_erasure.scenarios.replay import build

    if config.replay_dir is None:
        return {}
    manifest = read_manifest(config.replay_dir, config.standard_model)
    return {s.id: s for s in build(manifest, Path(config.replay_dir))}
