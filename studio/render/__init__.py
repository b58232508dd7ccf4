"""Rendering: face crops, synthetic facial maps, the retrieval and neural renderers, paste-back.

Submodules are imported explicitly (``from studio.render.crop import CropTrack``); importing this
package loads nothing heavy.
"""

REFERENCE_SIZE = 256  # px: pixel settings of the renderers (widths, feathers, dilations) are given at
# a 256 px face crop and scale with the crop's size

RESAMPLE = 2  # cv2.INTER_CUBIC: how the pixels a dub shows are resampled (pool crops, the retrieval
# warp, paste-back). They are resampled three times; bilinear is a low-pass at fractional offsets and
# kept 0.45 of the template's mouth-region Laplacian variance on the Obama clips, bicubic keeps ~0.8
# at the same dub speed (docs/results/visual_quality.md). Masks, and the per-frame template crop
# (replaced inside the mask), stay bilinear.
