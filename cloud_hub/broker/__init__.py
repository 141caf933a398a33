"""The MQTT broker around the hub: a local mosquitto or amqtt (local) and the generated broker
configuration (config), with its users and ACL for mosquitto's dynamic security plugin (dynsec)
and the broker names the hub keeps for itself (identity).
"""
