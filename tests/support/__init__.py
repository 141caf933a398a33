"""Helpers the tests share: a device rig, a dashboard fleet, a watcher of the devices' topics."""
