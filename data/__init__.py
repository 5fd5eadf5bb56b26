"""Data layer: one metadata table for every source format, image loading, transforms, samplers."""
