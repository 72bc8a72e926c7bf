"""Built-in search spaces: ``mbv2`` (a CIFAR-style MobileNetV2 space) and ``paper-truncated``.

``paper-truncated`` is the IG-KD paper's teacher and its truncated students. Both spaces compile to timm's
inverted-residual blocks through :mod:`automl_kd.plugins.spaces.irnet`, which also holds the analytic cost
model they share.
"""
