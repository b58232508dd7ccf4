"""Rendering: face crops, synthetic facial maps, the retrieval and neural renderers, paste-back.

Submodules are imported explicitly (``from studio.render.crop import CropTrack``); importing this
package loads nothing heavy.
"""
