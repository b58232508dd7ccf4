"""Lip Sync Studio: pose-adaptive lip sync (Zheng, Song, Ji, ICASSP 2021) as an editing tool.

Importing this package has no side effects: no model is built and nothing is downloaded.
"""

__version__ = "0.1.0"
