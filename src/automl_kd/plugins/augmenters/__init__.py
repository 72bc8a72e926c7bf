"""Built-in augmenters."""
