"""An example flowgraph plugin (see pyproject.toml for its entry points)."""
