"""Algorithms: tabular updates, LLM losses and step plans (pure torch; no ray/transformers)."""
