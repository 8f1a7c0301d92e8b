"""One module per ``d3d`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
