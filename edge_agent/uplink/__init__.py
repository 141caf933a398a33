"""Records on their way to the hub: telemetry windows and samples (telemetry, sampling), the
offline buffer (buffer) and hub-confirmed delivery (delivery).
"""
