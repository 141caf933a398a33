"""The device runtimes the hub checks conversions on: building their cached environments."""
