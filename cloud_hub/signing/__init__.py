"""The hub's signing side: Ed25519 keys and the TUF repository that signs models in as targets."""
