"""Integrated gradients: attribution (``attribution``, ``fused``), the cached maps (``maps``), the gallery."""
