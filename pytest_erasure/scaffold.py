"""Write a starter audit suite into another project: the gate in a team's own model repository.

    python -m pytest_erasure.scaffold audits --suite cifar10      # or: pytest-erasure-scaffold

writes `audits/test_erasure.py` (the one test the plugin parametrizes), the suite's concepts
file and a README for the team with the commands to run it. The files come from the installed
package (`config.PACKAGE_DATA`), so no clone is needed. Existing files are never overwritten
unless `--force`: a team's edited concepts file is their record of what they audit.

Suites:
- `shapes`: the bundled CPU world, a demo that runs anywhere in minutes. Its concepts file
  points, by absolute path, at the world inside the installed package (a concepts file's
  relative paths may not leave its tree); scaffold again after installing into another
  environment.
- `cifar10`, `nudity`: the SD v1.4 suites (audits/sd14/), to be pointed at local weights.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_erasure.config import ROOT, SHAPES

SUITES = ("shapes", "cifar10", "nudity")


def sources(suite: str) -> dict[str, Path]:
    """{file name in the new suite: the packaged file it starts from}."""
    audits = ROOT / "audits"
    concepts = audits / "shapes.toml" if suite == "shapes" else audits / "sd14" / f"{suite}.toml"
    return {"test_erasure.py": audits / "test_erasure.py", concepts.name: concepts}


def concepts_text(suite: str, packaged: Path) -> str:
    """The suite's concepts file as the new project needs it. The shapes suite's relative paths
    (`../fixtures/shapes/...`) become absolute ones into the installed world; the SD v1.4
    suites keep theirs (`weights/...` then means the new suite's own weights/ folder)."""
    text = packaged.read_text(encoding="utf-8")
    if suite == "shapes":
        relative = "../fixtures/shapes"
        assert relative in text, f"{packaged} no longer points at {relative}"
        text = text.replace(f'"{relative}', f'"{SHAPES.resolve().as_posix()}')
        header = (f"# Scaffolded by pytest_erasure.scaffold: paths point into the shapes world "
                  f"of the installed package\n# ({SHAPES.resolve()}); scaffold again after "
                  "installing into another environment.\n")
        text = header + text
    return text


def readme(suite: str, folder: Path, concepts: str) -> str:
    """The team's README: what the suite audits and the commands that run it."""
    where = folder.as_posix()
    if suite == "shapes":
        run = (f"    pytest {where}/ --concepts={where}/{concepts}\n\n"
               "audits the bundled shapes world on the CPU (its defaults: the standard model and "
               "the UCE-erased model\nthat erased `circle`, from the installed package). A "
               "smaller first run:\n\n"
               f"    pytest {where}/ --concepts={where}/{concepts} --scenarios=text,baseline "
               "--samples=8\n\n"
               "The full default audit ends red by design: the shipped UCE model leaks circles "
               "under the latent and\nembedding attacks (exit code 1).\n")
    else:
        concept = "airplane" if suite == "cifar10" else "nudity"
        needs = ("the Grounding DINO detector's folder at "
                 f"`{where}/weights/grounding-dino-tiny` (or an absolute `detector_path`)"
                 if suite == "cifar10" else "the `nudity` extra installed beside the "
                 "package (`pip install 'pytest-erasure[nudity]'`, or the wheel file's "
                 "`[nudity]`: NudeNet's detector ships in its own wheel)")
        run = (f"    pytest {where}/ --concepts={where}/{concepts} --erased-concept={concept} \\\n"
               "        --standard-model=/models/sd-v1-4 --erased-model=/models/your-erased-model "
               "\\\n        --erasure-budget=sd14 --device=cuda --dtype=float16 "
               "--erasure-report=report/\n\n"
               f"It needs, on local disk, the standard model (`CompVis/stable-diffusion-v1-4`, a "
               f"diffusers folder), your\nerased checkpoint, and {needs}. The download commands: "
               "the guide in the package's `audits/sd14/README.md`\n"
               f"({ROOT / 'audits' / 'sd14' / 'README.md'}). Add `--irece` to gate the model "
               "behind the IRECE defense instead\nof the model as released. Check the setup "
               "first, loading nothing heavy: the same command with `--co -q`.\n")
    return (f"# Concept-erasure audit ({suite})\n\n"
            "Scaffolded by `python -m pytest_erasure.scaffold`. Every concept x scenario is one "
            "pytest test whose\nassertion is a CRR (concept reproduction rate) gate; the exit "
            "code is the release gate (0 pass,\n1 a case failed, 4 a usage error).\n\n"
            f"- `test_erasure.py`: the test the plugin parametrizes; keep it as is.\n"
            f"- `{concepts}`: what was erased, its prompts, detector and neighbours. Edit it: "
            "it is your record\n  of what you audit.\n\n"
            f"Run, from the folder that holds `{where}/`:\n\n{run}\n"
            "Write path options as `--option=PATH`. Every option: `pytest --help`, section "
            "\"concept-erasure audit\".\n")


def scaffold(folder: Path, suite: str, force: bool = False) -> list[Path]:
    """Write the suite into `folder`; return the files written. Refuses (ValueError, naming
    them) to overwrite existing files unless `force`."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}: use one of {', '.join(SUITES)}")
    files = sources(suite)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the package's suite files are missing: {', '.join(missing)}")
    concepts = next(name for name in files if name.endswith(".toml"))
    texts = {name: (concepts_text(suite, path) if name == concepts
                    else path.read_text(encoding="utf-8")) for name, path in files.items()}
    texts["README.md"] = readme(suite, folder, concepts)
    targets = {folder / name: text for name, text in texts.items()}
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise ValueError(f"would overwrite {', '.join(existing)}: pass --force to replace them")
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in targets.items():
        path.write_text(text, encoding="utf-8")
    return list(targets)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_erasure.scaffold",
        description="Write a starter concept-erasure audit suite (test module, concepts file, "
                    "README) into FOLDER.")
    parser.add_argument("folder", nargs="?", default="audits",
                        help="the suite's folder, created if needed (default: audits)")
    parser.add_argument("--suite", choices=SUITES, default="shapes",
                        help="shapes: the bundled CPU demo world; cifar10, nudity: the SD v1.4 "
                             "suites (default: shapes)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    try:
        written = scaffold(Path(args.folder), args.suite, args.force)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    concepts = next(p for p in written if p.suffix == ".toml")
    print(f"next: pytest {Path(args.folder).as_posix()}/ --concepts={concepts.as_posix()} "
          f"(see {Path(args.folder).as_posix()}/README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
