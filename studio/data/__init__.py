"""Data: the clip cache, clip preprocessing, training windows and synthetic talking heads."""
