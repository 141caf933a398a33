"""The MQTT broker around the hub: a local mosquitto or amqtt (local) and the generated broker
configuration (config).
"""
