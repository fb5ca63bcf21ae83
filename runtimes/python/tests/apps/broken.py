"""A module whose import fails: the worker must exit 3 with this traceback."""
raise RuntimeError("import-time-boom")
