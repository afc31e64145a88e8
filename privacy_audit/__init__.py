"""Measured privacy, beside the accountant's bounds: what a researcher audits and what an
operator plans with.

- `privacy_audit.planner` (`python -m privacy_audit.planner`): the noise a population,
  cohort and number of rounds need for a target epsilon, and the accuracy it is expected
  to cost (from `privacy_audit.tolerance`, measured runs of this model); and the inverse.
- `privacy_audit.canaries`: secret-sharer canaries (Carlini et al. 2019) and their exposure.
- `privacy_audit.empirical`: the one-run empirical epsilon of Andrew et al. (ICLR 2024)
  from random-direction canary devices.

`benchmarks/privacy_audit_fleet.py` runs them through the real fleet.
"""
