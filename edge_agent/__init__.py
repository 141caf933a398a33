"""edgefleet device agent: verifies, installs and serves models on a device."""

__version__ = "0.1.0"
