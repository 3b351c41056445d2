"""The command line: thin Typer commands over the public functions."""
