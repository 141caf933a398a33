"""Drift across the fleet: merging device reports per model and cohort (fleet) and reading them
(source).
"""
