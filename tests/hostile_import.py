"""A module that fails on import, as a user's broken model file does."""

raise RuntimeError("this module is broken at import time")
