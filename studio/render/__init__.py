"""Rendering: face crops, synthetic facial maps, the retrieval and neural renderers, paste-back.

Submodules are imported explicitly (``from studio.render.crop import CropTrack``); importing this
package loads nothing heavy.
"""

REFERENCE_SIZE = 256  # px: pixel settings of the renderers (widths, feathers, dilations) are given at
# a 256 px face crop and scale with the crop's size
