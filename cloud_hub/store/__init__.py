"""The hub's database: records stored exactly once, devices, rollouts, commands (SQLAlchemy)."""
