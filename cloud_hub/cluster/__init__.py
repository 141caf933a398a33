"""Several hub workers on one store: which of them leads (cloud_hub.cluster.leader)."""
