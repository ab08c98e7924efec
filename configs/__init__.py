"""Run configs: plain data, one file per dataset and phase (see common.py)."""
