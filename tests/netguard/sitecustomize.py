"""Loaded by every Python process the tests start (it is on their PYTHONPATH)."""

import tests_netguard

tests_netguard.install()
