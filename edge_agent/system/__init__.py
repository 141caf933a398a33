"""The board the agent runs on: its identity keys, resources, disk health, atomic file writes and
the systemd unit.
"""
