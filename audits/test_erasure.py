"""The audit suite: one test per concept x scenario, parametrized by pytest-erasure.

Run `pytest audits/` to audit the shapes world, or point it at your own models:
`pytest audits/ --erased-model=PATH --standard-model=PATH --concepts=FILE` (path options
with `=`: README says why).
"""


def test_erasure(erasure_case, erasure_check):
    erasure_check(erasure_case)
