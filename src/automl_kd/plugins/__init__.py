"""Built-in plugins: one module per plugin, registered exactly like third-party plugins."""
