"""Several hub workers on one store: which of them leads (cloud_hub.cluster.leader)."""

LEADER_TIMEOUT_S = 60.0  # a leader's lock session quiet this long is a hung leader's: it is ended
MIN_LEADER_TIMEOUT_S = 2.0  # the heartbeat speaks six times in a timeout, at most every 5 s
