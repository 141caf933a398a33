"""The edgehub command line: one module per command group; tables or --json in output.py."""
