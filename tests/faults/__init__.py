"""The reliability/fault suite: real servers, real HTTP load, injected faults, measured figures.

`scenarios.py` holds each scenario as an async function returning its figures, `test_faults.py`
runs the fast version of each on every backend it applies to, and `python -m tests.faults.report
[--full]` runs them all and writes `docs/reliability.md`.
"""
