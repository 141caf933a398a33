"""The wire contract both the hub and the agent speak: topics, messages, chunked transfer.

Only the standard library and numpy may be imported here.
"""

SCHEMA_VERSION = 1
