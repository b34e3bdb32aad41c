"""Untrusted inputs: weights from the internet, concepts files from elsewhere, prompts an attack
found. Nothing in them may run code, reach the network, read outside what they declare, or
inject markup into a report.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from pytest_erasure.errors import ErasureInputError

PACKAGE = Path(__file__).resolve().parents[2] / "pytest_erasure"
AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
# `point`: n=2 is below what the default `exact` gate can ever pass; these tests are about
# what an audit touches and writes, not the gate rule.
FAST = ("--samples=2", "--steps=1", "--batch-size=2", "-p", "no:randomly", "-p",
        "no:cacheprovider", "--no-erasure-cache", "--scenarios=text", "--erasure-gate=point")


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file exists iff the payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _args(world: dict[str, Path], **options: str) -> list[str]:
    values = {"standard-model": str(world["standard"]), "erased-model": str(world["erased"]),
              "concepts": str(world["concepts"])}
    values.update({k.replace("_", "-"): v for k, v in options.items()})
    return [f"--{k}={v}" for k, v in values.items()] + list(FAST)


# -- pickles ---------------------------------------------------------------------------------------

def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


UNPICKLES_ITS_OWN = {
    "executors/process.py": "the process executor checks that an exception it has just pickled "
                            "loads back before sending it to the driver over its worker's pipe "
                            "(a multiprocessing pipe unpickles what it carries): bytes it made "
                            "itself, never a file and never another party's data",
    "executors/ray.py": "the Ray executor passes units and their results between the driver and "
                        "its own actors as pickled bytes (Ray's own transport is cloudpickle "
                        "anyway): bytes this audit's driver or its actors made, never a file; a "
                        "cluster runs the code it is sent, so only a trusted one is joined "
                        "(docs/ray.md says so)",
}
"""Modules that unpickle bytes they made themselves, each with the reason."""


def test_the_package_unpickles_only_weights_only() -> None:
    """Every torch.load in the package passes weights_only=True; nothing calls pickle.load or
    trusts remote code (but a module in UNPICKLES_ITS_OWN, on its own bytes)."""
    loads = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call in _calls(ast.parse(path.read_text(), str(path))):
            name = _name(call.func)
            keywords = {k.arg: k.value for k in call.keywords}
            where = f"{path.relative_to(PACKAGE)}:{call.lineno}"
            if name.endswith("torch.load"):
                loads.append(where)
                value = keywords.get("weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, where
            if str(path.relative_to(PACKAGE)) not in UNPICKLES_ITS_OWN:
                assert name not in ("pickle.load", "pickle.loads", "pickle.Unpickler",
                                    "dill.load", "joblib.load"), where
            else:
                assert name not in ("pickle.load", "pickle.Unpickler", "dill.load",
                                    "joblib.load"), where  # loads of its own bytes only
            remote = keywords.get("trust_remote_code")
            assert remote is None or (isinstance(remote, ast.Constant) and remote.value is False), \
                where
    assert loads, "the pickle loader is found (formats/files.py)"


def test_torch_load_is_called_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    import torch

    from pytest_erasure.models.formats import files

    seen: list[dict[str, object]] = []
    real = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", spy)
    torch.save({"conv_in.weight": torch.zeros(2, 2)}, tmp_path / "unet.pt")
    files.forget()
    assert set(files.read_state_dict(tmp_path / "unet.pt")) == {"conv_in.weight"}
    files.forget()
    assert seen and all(kw.get("weights_only") is True for kw in seen)


def _payload_files(world: dict[str, Path], root: Path, marker: Path) -> dict[str, Path]:
    """The same payload in every place a published erased model keeps a pickle."""
    import torch
    from safetensors.torch import load_file

    unet = load_file(str(world["standard"] / "unet" / "diffusion_pytorch_model.safetensors"))
    out: dict[str, Path] = {}
    # ESD/UCE-style UNet tensors (torch.save zip format), with one tensor that really fits.
    out["unet-pt"] = root / "erased-unet.pt"
    torch.save({"conv_in.weight": unet["conv_in.weight"], "x": Payload(marker)}, out["unet-pt"])
    # A legacy (pre-zip) pickle under a .ckpt name.
    out["legacy-ckpt"] = root / "model.ckpt"
    out["legacy-ckpt"].write_bytes(pickle.dumps({"state_dict": Payload(marker)}, protocol=2))
    # Receler's eraser_weights.pt beside a genuine eraser_config.json.
    receler = root / "receler"
    receler.mkdir()
    (receler / "eraser_config.json").write_text(json.dumps({"eraser_type": "adapter",
                                                            "eraser_rank": 1}))
    torch.save({"down_blocks.0.attentions.0": Payload(marker)}, receler / "eraser_weights.pt")
    out["receler"] = receler
    # A diffusers pipeline folder whose UNet weights are a .bin pickle (diffusers' loader).
    folder = root / "pipeline"
    shutil.copytree(world["erased"], folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({**unet, "x": Payload(marker)}, folder / "unet" / "diffusion_pytorch_model.bin")
    out["diffusers-bin"] = folder
    return out


@pytest.mark.parametrize("kind", ["unet-pt", "legacy-ckpt", "receler", "diffusers-bin"])
def test_crafted_pickle_is_refused_and_never_runs(kind: str, pytester: pytest.Pytester,
                                                  tiny_world: dict[str, Path]) -> None:
    marker = pytester.path / "PAYLOAD_RAN"
    payload = _payload_files(tiny_world, pytester.mkdir("payloads"), marker)[kind]
    assert not marker.exists()
    pytester.makepyfile(test_audit=AUDIT)
    args = _args(tiny_world, erased_model=str(payload))
    # The user's view in a fresh interpreter for one; the same code path in-process for the rest.
    run = pytester.runpytest_subprocess if kind == "unet-pt" else pytester.runpytest_inprocess
    result = run(*args)
    out, err = result.stdout.str(), result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out + err
    assert not marker.exists(), "the pickle's payload ran"
    (line,) = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert str(payload) in line and "refused for safety" in line, line
    assert "open" in line, "the error names what was refused"
    assert "weights_only` set to `False`" not in line, "never advise unsafe loading"
    assert "Traceback" not in out + err


# -- no hub access ---------------------------------------------------------------------------------

NO_NETWORK = """
import socket

LOG = {log!r}
_connect = socket.socket.connect
_getaddrinfo = socket.getaddrinfo


def _refuse(what):
    with open(LOG, "a") as f:
        f.write(repr(what) + "\\n")
    raise OSError("network access attempted during an audit: " + repr(what))


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(address)
    return _connect(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost", "127.0.0.1", "::1"):
        _refuse(host)
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo
"""

OFFLINE_CHECK = """
import os


def test_hub_is_offline(erasure_session):
    erasure_session.context.models  # loading is where a hub lookup could happen
    import huggingface_hub.constants as constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert constants.HF_HUB_OFFLINE
"""


def test_an_audit_never_touches_the_network(pytester: pytest.Pytester,
                                            tiny_world: dict[str, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole audit (load, generate, detect, report) with every outbound socket refused and
    logged, and the offline variables unset by the caller: the plugin sets them itself."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    log = pytester.path / "network.log"
    pytester.makeconftest(NO_NETWORK.format(log=str(log)))
    pytester.makepyfile(test_audit=AUDIT, test_offline=OFFLINE_CHECK)
    report = pytester.path / "report"
    result = pytester.runpytest_subprocess(*_args(tiny_world), f"--erasure-report={report}")
    result.assert_outcomes(passed=2)
    assert not log.exists(), log.read_text()
    assert json.loads((report / "report.json").read_text())["provenance"]["offline"] is True


def test_offline_is_forced_where_models_load_unless_the_user_opts_in(
        pytester: pytest.Pytester, tiny_world: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that loads no model leaves the environment alone; loading switches the hub off
    unless --allow-hub (and then the caller's own setting stands)."""
    pytester.makepyfile(test_audit=AUDIT)
    quick = ("--scenarios=baseline", "--samples=2", "--steps=2", "--no-erasure-cache")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert pytester.runpytest_inprocess(*_args(tiny_world), "--co").ret == pytest.ExitCode.OK
    assert os.environ.get("HF_HUB_OFFLINE") is None  # nothing loaded: nothing switched
    result = pytester.runpytest_inprocess(*_args(tiny_world), *quick)
    assert result.ret in (0, 1)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the caller's own setting is left alone
    result = pytester.runpytest_inprocess(*_args(tiny_world), *quick, "--allow-hub")
    assert result.ret in (0, 1)
    assert os.environ["HF_HUB_OFFLINE"] == "0"


# -- concepts files stay inside what they declare ---------------------------------------------------

CONCEPT = """
[[concept]]
name = "circle"
detector = "pytest_erasure.testing:build_brightness_detector"
prompts = ["a {concept}"]
"""


def _suite(tmp_path: Path) -> Path:
    """audits/suite/concepts.toml inside a project folder, with references beside it."""
    folder = tmp_path / "project" / "audits" / "suite"
    (folder / "refs").mkdir(parents=True)
    (tmp_path / "project" / "audits" / "shared").mkdir()
    return folder / "concepts.toml"


@pytest.mark.parametrize("key, value", [
    ("references", "../../../etc"),
    ("references", "../../.."),
    ("references", "refs/../../../../etc"),
    ("detector_path", "../../../root/.ssh/id_rsa"),
])
def test_relative_paths_may_not_leave_the_concepts_files_tree(tmp_path: Path, key: str,
                                                              value: str) -> None:
    from pytest_erasure.concepts import load_concepts

    concepts = _suite(tmp_path)
    concepts.write_text(CONCEPT + f'{key} = "{value}"\n')
    with pytest.raises(ErasureInputError, match="leaves the concepts file's folder tree"):
        load_concepts(concepts)


def test_a_symlink_placed_in_the_tree_is_followed_like_an_absolute_path(tmp_path: Path) -> None:
    """The containment rule is about the file's text (`..` climbing out unseen); a symlink is
    a file of its own in the suite, pointing elsewhere openly, as an absolute path does. It is
    followed, and the concept records where it really points. A symlink reached by `..`
    climbing out is still refused: the text climbs."""
    from pytest_erasure.concepts import load_concepts

    concepts = _suite(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (concepts.parent / "refs" / "link").symlink_to(outside, target_is_directory=True)
    concepts.write_text(CONCEPT + 'references = "refs/link"\n')
    (concept,) = load_concepts(concepts).concepts.values()
    assert concept.references == outside.resolve()
    (tmp_path / "link-above").symlink_to(outside, target_is_directory=True)
    concepts.write_text(CONCEPT + 'references = "../../../link-above"\n')
    with pytest.raises(ErasureInputError, match="leaves the concepts file's folder tree"):
        load_concepts(concepts)


def test_declared_paths_are_allowed(tmp_path: Path) -> None:
    """Inside the file's folder, and one level up (a shipped suite's shared fixtures). An
    absolute path is the user's explicit choice, written in their own concepts file: it is
    honoured as given (the containment rule is against `../` tricks, not against the user)."""
    from pytest_erasure.concepts import load_concepts

    concepts = _suite(tmp_path)
    absolute = tmp_path / "elsewhere"
    for value, expected in (("refs", concepts.parent / "refs"),
                            ("../shared", concepts.parent.parent / "shared"),
                            (str(absolute), absolute)):
        concepts.write_text(CONCEPT + f'references = "{value}"\n')
        (concept,) = load_concepts(concepts).concepts.values()
        assert concept.references == expected.resolve() or concept.references == expected


@pytest.mark.parametrize("entry", ['report = "/tmp/x"', 'cache = "../.."', 'output = "out"'])
def test_a_concepts_file_declares_no_output_paths(tmp_path: Path, entry: str) -> None:
    """A concepts file can only name what is read; where anything is written is the command
    line's choice (--erasure-report, --erasure-junit, --erasure-cache)."""
    from pytest_erasure.concepts import load_concepts

    concepts = _suite(tmp_path)
    for text in (entry + "\n" + CONCEPT, CONCEPT + entry + "\n"):
        concepts.write_text(text)
        with pytest.raises(ErasureInputError, match="unknown key"):
            load_concepts(concepts)


def test_escape_through_the_plugin_is_a_usage_error(pytester: pytest.Pytester,
                                                    tiny_world: dict[str, Path]) -> None:
    concepts = pytester.path / "suite" / "concepts.toml"
    concepts.parent.mkdir()
    concepts.write_text(CONCEPT + 'references = "../../../etc"\n')
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(*_args(tiny_world, concepts=str(concepts)))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *('circle') references: '../../../etc' leaves the "
                                 "concepts file's folder tree; use a path inside it*"])


# -- reports escape prompts ---------------------------------------------------------------------

HOSTILE = ("<script>alert('xss')</script>", "<img src=x onerror=alert(1)>",
           "\"><svg onload=alert(2)>", "| a | table | break |",
           "``` </code><script>alert(3)</script>", "`</code><svg onload=alert(4)>`")


def _assert_escaped(html: str, markdown: str) -> None:
    """The HTML report as a browser gets it, and the Markdown report as a renderer (CommonMark
    with raw HTML allowed, plus tables) turns it into HTML: no hostile tag survives either."""
    from markdown_it import MarkdownIt

    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    for name, text in (("html", html), ("markdown", rendered)):
        for tag in ("<script>alert", "<img src=x", "<svg onload"):
            assert tag not in text, f"{tag} is live in the {name} report"
    assert "&lt;script&gt;alert(" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;script&gt;alert(" in rendered, "the prompt is shown, as text"


def test_reports_escape_prompts_from_the_concepts_file(pytester: pytest.Pytester,
                                                       tiny_world: dict[str, Path]) -> None:
    """Prompts travel into evidence labels, facts and messages: all escaped, end to end."""
    concepts = pytester.path / "concepts.toml"
    prompts = json.dumps([f"{h} {{concept}}" for h in HOSTILE])
    concepts.write_text(CONCEPT.replace('["a {concept}"]', prompts))
    pytester.makepyfile(test_audit=AUDIT)
    report = pytester.path / "report"
    result = pytester.runpytest_inprocess(*_args(tiny_world, concepts=str(concepts)),
                                          f"--erasure-report={report}")
    result.assert_outcomes(passed=1)
    _assert_escaped((report / "report.html").read_text(), (report / "report.md").read_text())
    data = json.loads((report / "report.json").read_text())
    labels = [label for grid in data["cases"][0]["evidence"] for label in grid["labels"]]
    assert any(HOSTILE[0] in label for label in labels), "JSON keeps the prompt verbatim"


def test_reports_escape_attack_found_prompts() -> None:
    """An adversarial search returns arbitrary strings; they reach facts, labels, the message."""
    from pytest_erasure.records import AuditRecord, CaseResult, Rate
    from pytest_erasure.report.html import to_html
    from pytest_erasure.report.markdown import to_markdown

    found = list(HOSTILE)
    case = CaseResult(
        case_id="circle-adversarial-black", concept="circle", scenario="adversarial-black",
        modality="adversarial", access="black-box", kind="erasure", threshold=0.2, gate="point",
        passed=False, rate=Rate(3, 4), standard=Rate(4, 4), base_rate=Rate(0, 4),
        message=f"circle-adversarial-black: found {found[0]}",
        facts={"prompts": found, "best_prompt": found[1], found[2]: "as a key"},
        evidence=[{"title": found[2], "png_base64": "", "labels": found, "present": [True] * 4}])
    record = AuditRecord(run_id="r", started="s", config={"concepts_file": found[0]},
                         provenance={}, detectors={}, versions={}, cases=[case])
    _assert_escaped(to_html(record), to_markdown(record))
