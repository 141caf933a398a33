"""The agent's one MQTT adapter: a session with one reconnect policy (capped exponential backoff,
full jitter) that the uplink, the MQTT input, the local results feed and the hub all use.
"""
