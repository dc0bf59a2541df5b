"""One module per ``cryotune`` subcommand; the list lives in ``cryotune.cli.COMMANDS``."""
