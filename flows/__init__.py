"""Prefect flows: they only wire nuclei's steps into tasks and report what happened."""
