"""The ``polynl`` command line (typer): a thin shell over polynl_deploy."""
