"""Prefect flows: they only wire nuclei's steps into tasks and report what happened."""

import os

# Prefect's temporary server (no PREFECT_API_URL) gets 20 s to start by default: on a busy 2-core machine that
# fails whole runs. Set before Prefect is first imported; an explicit setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
