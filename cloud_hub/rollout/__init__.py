"""Rollouts: the engine that decides waves, the gates that judge them, shadow runs and operations
on them.
"""
