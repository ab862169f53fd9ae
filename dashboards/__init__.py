"""The dashboards as code: `generate.py` builds `spotguard.json`."""
