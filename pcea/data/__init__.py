"""Datasets (one class per ModelNet40 layout), transforms, the synthetic stand-in, downloads."""
