"""A guided probe whose gated searches find nothing while its guided control does is not a pass.

The fixture is found, not built: on the shapes world's ESD-x circle model the measured run
(README, the guidance-probe rows) found no circle in 16 guided searches from circle's prompts
(0/16, which alone passes the exact gate at 20%) and circles in 8 of 16 guided searches from the
neutral prompts: the guidance steers the erased model to circles when the prompt does not name
them. An attacker with the probe's access holds that search too, so the case must not pass
(`checks._alternative`). The run trains the latent classifier and searches both models (about
3 minutes alone on this machine's CPU): marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.testing.audits import shapes_case


@pytest.mark.slow
def test_a_guided_control_that_finds_the_concept_blocks_the_pass(tmp_path: Path) -> None:
    case = shapes_case(tmp_path, "esd-x-circle", "circle-guidance-probe",
                       "--scenarios=guidance-probe", "--samples=16")
    control = case["facts"]["guided_control"]
    assert case["rate"]["hits"] == 0 and case["standard"]["hits"] == 16, case["message"]
    assert control["successful_searches"] >= 1, control  # measured: 8 of 16
    assert case["verdict"] == "inconclusive", case["message"]
    assert f"{control['successful_searches']} of 16 searches" in case["reason"]
    assert "cannot pass" in case["reason"]
