"""Prefect flows: they only wire nuclei's steps into tasks and report what happened. Importing them changes no
setting: the command line sets Prefect's defaults (`nuclei.cli.main.prefect_defaults`)."""
