"""CLI subcommands, imported lazily by selfplay.cli."""
