"""Shared test settings: multi-rank tests use the ``dist_world`` fixture of distcomm's pytest plugin."""

import logging

logging.getLogger("distcomm").setLevel(logging.DEBUG)
