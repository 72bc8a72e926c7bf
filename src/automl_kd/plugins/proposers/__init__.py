"""Built-in proposers."""
