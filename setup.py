"""The compiled parts: edge_agent.native's C loops (the CSV parser, the drift monitor's
counts). They are optional: where they cannot be built (no C compiler on a device), the agent runs
the same code in Python, only slower (edge_agent.native). Everything else is in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(f"edge_agent.native._{name}", [f"edge_agent/native/{name}.c"], optional=True)
        for name in ("csvrows", "drift")
    ]
)
