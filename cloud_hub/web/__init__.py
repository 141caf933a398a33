"""The dashboard: the JSON API (api), the views it reads (views), Prometheus metrics, actions and
the server.
"""
