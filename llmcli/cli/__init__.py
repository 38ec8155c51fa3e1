"""The Typer command-line layer: parses options and hands off to the rest of llmcli."""
