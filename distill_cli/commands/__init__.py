"""One module per subcommand, each a thin wrapper over a core function."""
