"""Whole-system runs on one machine: the demo, simulated fleets and the soak."""
