"""Distillation: the augmenter base, feature taps, views (crop/flip), the teacher and its cached outputs, the
training loop, and ``fit`` (training a candidate, written once); ``ig/`` holds integrated gradients."""
