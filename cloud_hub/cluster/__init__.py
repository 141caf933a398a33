"""Several hub workers on one store: which of them leads (cloud_hub.cluster.leader)."""

LEADER_TIMEOUT_S = 60.0  # a leader's lock session quiet this long is a hung leader's: it is ended
# the least --leader-timeout: a live leader's heartbeat can pause as long as a C call that
# keeps the interpreter's lock, or a swap storm; a pause past the timeout ends its lead
MIN_LEADER_TIMEOUT_S = 5.0
