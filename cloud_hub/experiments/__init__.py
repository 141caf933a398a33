"""Experiments: two models across the fleet, in cohorts, compared with a stated test (design),
stepped by the running hub (engine), read from the store (samples) and started, stopped and
promoted by hand (operations).
"""
