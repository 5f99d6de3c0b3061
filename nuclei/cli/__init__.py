"""The `nuclei` command (a shell, like flows/): one module per command, wired in `nuclei.cli.main`. Importing it
changes nothing in the process; `nuclei.cli.main.main` sets up what the command line needs (`prepare_process`)."""
