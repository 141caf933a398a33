"""The hub: artifact store, TUF repository, device registry, rollout engine, broker, CLI."""
