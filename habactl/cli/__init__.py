"""The `habactl` command line: one module per subcommand, sharing `app.py`."""
