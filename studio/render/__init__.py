"""Rendering: face crops, synthetic facial maps, the retrieval and neural renderers, paste-back.

Submodules are imported explicitly (``from studio.render.crop import CropTrack``); importing this
package loads nothing heavy.
"""

REFERENCE_SIZE = 256  # px: pixel settings of the renderers (widths, feathers, dilations) are given at
# a 256 px face crop and scale with the crop's size

RESAMPLE = 2  # cv2.INTER_CUBIC, for every resampling of picture pixels on the render path (face crop,
# retrieval warp, paste-back). A dub resamples the same texture three times; bilinear is a low-pass at
# fractional offsets and kept 0.45 of the template's mouth-region Laplacian variance on the Obama
# clips, cubic keeps 0.80 at the same speed (docs/results/visual_quality.md). Masks stay bilinear.
