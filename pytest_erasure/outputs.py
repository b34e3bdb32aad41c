"""Where an audit writes: every destination checked before a model loads, and a fallback when a
write still fails at the end.

An audit on a GPU can run for an hour; a report folder that turns out read-only, a JUnit path
that is a folder, or a disk that fills up must cost a one-line usage error before the first
image, not a traceback after the last one. So before anything loads:

- each destination is probed by creating and removing a temporary file (or folder) where the
  audit will write. `os.access` is not enough: root passes it on a read-only mode, and it knows
  nothing of immutable files (`chattr +i`) or read-only mounts, which refuse root too;
- a folder destination must not be a file (nor lie under one), a file destination not a folder;
- the free space of each filesystem must hold what the run will write there (`estimate`).

What can still go wrong after the run (the folder removed or made read-only mid-run, the disk
filled by someone else) is caught by `write_or_fall_back`: the results go to
`<tmp>/pytest-erasure-<run id>/` instead, and the terminal summary says where.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.errors import ErasureInputError

if TYPE_CHECKING:
    from pytest_erasure.session import AuditSession

BLOCK = 4096
"""Filesystem allocation unit assumed for a small file: a cache entry of a 32x32 image (3 KiB)
still takes a whole block on ext4/xfs."""
ENTRY_OVERHEAD = 1024
"""Bytes a cached image carries beside its pixels: safetensors header, sha256, facts JSON."""
EVIDENCE_GRIDS = 2
EVIDENCE_IMAGES = 16
REPORT_FILES_WITH_EVIDENCE = 2
"""report.json and report.html each hold every evidence grid (base64 PNG); report.md none."""
REPORT_TEXT_PER_CASE = 64 * 1024
"""Facts, messages and evaluated prompts of one case, in all three reports (fuzz keeps up to 500
prompts)."""


@dataclass(frozen=True)
class Destination:
    """One place the audit writes: `what` names the input (`--erasure-report DIR`), `fix` says
    what to do about a problem, `folder` whether it is a folder (else a file), `need` the bytes
    the run will write there (0: not estimated)."""

    what: str
    path: Path
    folder: bool
    fix: str
    need: int = 0


def image_bytes(height: int, width: int) -> int:
    """Disk taken by one cached image: uint8 RGB pixels plus the entry's header, rounded up to
    whole filesystem blocks."""
    return math.ceil((3 * height * width + ENTRY_OVERHEAD) / BLOCK) * BLOCK


def report_bytes(cases: int, height: int, width: int) -> int:
    """report.json + report.html + report.md: per case, its evidence grids at worst as raw
    pixels (PNG only compresses) in base64 (4/3), in both files that embed them, plus text."""
    grids = EVIDENCE_GRIDS * EVIDENCE_IMAGES * 3 * height * width * 4 // 3
    return cases * (REPORT_FILES_WITH_EVIDENCE * grids + REPORT_TEXT_PER_CASE)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or "/")


def _fail(dest: Destination, problem: str) -> ErasureInputError:
    return ErasureInputError(dest.what, problem, dest.fix)


def _probe(dest: Destination) -> Path:
    """Create and remove a temporary entry where `dest` will be written; return the existing
    folder whose filesystem will hold it."""
    path = dest.path
    if dest.folder:
        if path.exists() and not path.is_dir():
            raise _fail(dest, "is a file, not a folder")
    elif path.is_dir():
        raise _fail(dest, "is a folder, not a file")
    target_folder = path if dest.folder else path.parent
    base = _existing_ancestor(target_folder)
    if not base.is_dir():
        raise _fail(dest, f"lies under {base}, which is a file, not a folder")
    try:
        if base == target_folder:
            fd, tmp = tempfile.mkstemp(dir=base, prefix=".pytest-erasure-probe-")
            os.close(fd)
            os.unlink(tmp)
        else:  # the audit will create the missing folders: can it?
            os.rmdir(tempfile.mkdtemp(dir=base, prefix=".pytest-erasure-probe-"))
        if not dest.folder and path.is_file():
            # Replaced atomically, but an immutable or otherwise locked file refuses even that.
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        where = "" if base == target_folder else f" (in {base})"
        raise _fail(dest, f"is not writable{where}: {exc.strerror or exc}") from None
    return base


def check_destinations(destinations: Iterable[Destination]) -> None:
    """Raise ErasureInputError for the first destination the audit could not write, or for a
    filesystem without room for everything the run writes to it (destinations on one disk
    share its free space)."""
    by_device: dict[int, list[tuple[Destination, Path]]] = {}
    for dest in destinations:
        base = _probe(dest)
        by_device.setdefault(base.stat().st_dev, []).append((dest, base))
    for entries in by_device.values():
        need = sum(dest.need for dest, _ in entries)
        if need == 0:
            continue
        dest, base = max(entries, key=lambda e: e[0].need)
        available = shutil.disk_usage(base).free
        if available < need:
            shared = (f" (with {', '.join(d.what for d, _ in entries if d is not dest)} on the "
                      "same disk)" if len(entries) > 1 else "")
            raise ErasureInputError(
                dest.what, f"has {human(available)} free, but this run writes about "
                f"{human(need)} there{shared}",
                "free space, point it at a larger disk, or lower --samples / the image size")


# -- at the end: write, or write elsewhere -------------------------------------------------------

def fallback_folder(run_id: str) -> Path:
    """Where results go when their destination refuses them: one folder per run, in the
    system's temporary folder (which every process can write), named so a person finds it."""
    return Path(tempfile.gettempdir()) / f"pytest-erasure-{run_id}"


def write_or_fall_back(label: str, destination: Path, write: Callable[[Path], object],
                       fallback: Path) -> str:
    """Call `write(destination)`; when it fails, `write(fallback)`. Return the line the terminal
    summary shows: where the output went, and why not where it was asked to go."""
    try:
        write(destination)
        return f"erasure {label}: {destination}"
    except Exception as exc:  # disk full, folder gone or read-only: anything, the results live on
        reason = f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError):
        fallback.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(fallback)
    except Exception as exc:
        return (f"erasure {label}: NOT WRITTEN - {destination} failed ({reason}) and so did the "
                f"fallback {fallback} ({type(exc).__name__}: {exc})")
    return (f"erasure {label}: could not be written to {destination} ({reason}); "
            f"written to {fallback} instead")


# -- what a run writes where -----------------------------------------------------------------------

def cached_images(session: AuditSession) -> int:
    """An upper estimate of the images a run caches, counted from the cases it selects.

    Per case, with n = --samples: baseline n (standard model); retention 2n (both models);
    an erasure case what its scenario declares (`Scenario.images_cached`: by default n on the
    erased model, 2n with a defense, and n on the standard model). Per audited concept: n for
    its base rate (neutral prompts) and the most any of its selected scenarios declares once
    per concept (`Scenario.images_per_concept`: training images when it has no references).
    Inverted latents and verdicts are smaller than their images and covered by the block
    rounding of `image_bytes`.
    """
    config = session.config
    n = config.samples
    erased = 2 * n if config.defense else n
    scenarios = session.context.scenarios
    total = 0
    per_concept: dict[str, int] = {}
    for case in session.cases():
        per_concept.setdefault(case.concept, 0)
        if case.kind == "baseline":
            total += n
        elif case.kind == "retention":
            total += 2 * n
        else:
            scenario = scenarios[case.scenario]
            total += scenario.images_cached(session.context, n, erased)
            concept = session.concepts.concepts[case.concept]
            per_concept[case.concept] = max(per_concept[case.concept],
                                            scenario.images_per_concept(session.context, concept))
    return total + sum(n + once for once in per_concept.values())


def cache_size(root: Path) -> int:
    """Bytes already under the cache folder. A rerun writes nothing it finds there, so the space
    its entries take counts as available: the check must not refuse a rerun served from the
    cache on a nearly full disk (it errs towards letting a run start; the fallback at the end
    keeps the results of one that then runs out)."""
    total = 0
    stack = [root]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def destinations(session: AuditSession, size: tuple[int, int], junitxml: Path | None
                 ) -> list[Destination]:
    """Every place this run writes, with what it writes there (`size`: the images' height and
    width). `junitxml` is pytest's own --junitxml, checked alike."""
    config = session.config
    height, width = size
    cases = session.cases()
    out: list[Destination] = []
    if config.cache_dir is not None:
        need = cached_images(session) * image_bytes(height, width)
        need = max(0, need - cache_size(Path(config.cache_dir)))
        out.append(Destination(
            f"--erasure-cache {config.cache_dir}", Path(config.cache_dir), True,
            "give --erasure-cache a writable folder on a disk with room, or --no-erasure-cache",
            need))
    scenarios = session.context.scenarios
    for scenario_id in dict.fromkeys(c.scenario for c in cases if c.kind == "erasure"):
        for write in scenarios[scenario_id].writes(session.context, config.cache_dir is not None):
            out.append(Destination(write.label, write.path, write.folder, write.fix))
    if config.report_dir is not None:
        out.append(Destination(
            f"--erasure-report {config.report_dir}", Path(config.report_dir), True,
            "give --erasure-report a writable folder (it is created if missing)",
            report_bytes(len(cases), height, width)))
    if config.junit_file is not None:
        out.append(Destination(
            f"--erasure-junit {config.junit_file}", Path(config.junit_file), False,
            "give --erasure-junit a file path in a writable folder", len(cases) * 8192))
    if junitxml is not None:
        out.append(Destination(f"--junitxml {junitxml}", junitxml, False,
                               "give --junitxml a file path in a writable folder",
                               len(cases) * 8192))
    return out


def check_outputs(session: AuditSession, config: Any) -> None:
    """Every place the run writes is writable and has room, before any model loads (`config`:
    pytest's, for its own --junitxml path)."""
    from pytest_erasure.models.geometry import model_geometry

    audit = session.config
    native = model_geometry(audit.standard_model).native_size or 512
    size = (audit.height or native, audit.width or native)
    xmlpath = getattr(config.option, "xmlpath", None)
    worker = hasattr(config, "workerinput")
    junitxml = Path(os.path.abspath(xmlpath)) if xmlpath and not worker else None
    check_destinations(destinations(session, size, junitxml))
