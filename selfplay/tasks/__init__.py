"""Tasks: where prompts come from and how a run is scored."""
