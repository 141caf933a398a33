"""Sensor input: lines from serial ports, files and MQTT, and the parser that turns a line into a
row.
"""
