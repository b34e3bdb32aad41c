"""Settings as a user gives them, through the real plugin: list options that refuse an empty
value, and where each setting's value comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bad_input import AUDIT, FAST, assert_usage_error, record_loads

from pytest_erasure.config import OPTIONS


def _world_args(world: dict[str, Path], **options: str) -> list[str]:
    given = {"--standard-model": str(world["standard"]), "--erased-model": str(world["erased"]),
             "--concepts": str(world["concepts"]), **options}
    return [f"{k}={v}" for k, v in given.items()] + list(FAST)


LIST_OPTIONS = [o.flag for o in OPTIONS if o.many]


def test_the_list_options_are_the_comma_separated_ones() -> None:
    """Every option whose help promises a comma-separated value is marked as a list, so none
    escapes the empty-value check below."""
    promised = {o.flag for o in OPTIONS if "comma" in o.help}
    assert "--scenarios" in promised
    assert promised <= set(LIST_OPTIONS)


@pytest.mark.parametrize("flag", LIST_OPTIONS)
@pytest.mark.parametrize("value", ["", ",", " , "])
def test_an_empty_list_option_is_a_usage_error(flag: str, value: str, pytester: pytest.Pytester,
                                               tiny_world: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`--scenarios=` once ran the whole audit (113 s on the shapes world, hours on SD v1.4)."""
    pytester.makepyfile(test_audit=AUDIT)
    loads = record_loads(monkeypatch)
    result = pytester.runpytest_inprocess(*_world_args(tiny_world, **{flag: value}))
    assert_usage_error(result, f"{flag}: is empty", "name at least one item")
    assert loads == []


def test_an_empty_list_from_the_api_is_refused_too() -> None:
    from pytest_erasure.errors import ErasureInputError
    from pytest_erasure.session import default_config

    with pytest.raises(ErasureInputError, match="--scenarios"):
        default_config(scenarios=[])
    assert default_config(scenarios="text, latent").scenarios == ("text", "latent")
