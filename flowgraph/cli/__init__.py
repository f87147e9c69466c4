r"""The `flowgraph` command line: one thin module per subcommand."""
