"""Training, checkpoints and evaluation of the audio -> landmark mapping (the paper's Table 1).

windows.py (data split and 64-frame windows), mapping.py (loss, trainer, CLI train-mapping),
checkpoint.py (MappingModel: load + predict; to_pixels, extend_template), evaluate.py (metrics,
CLI evaluate, benchmark), ablate.py (CLI ablate). Importing this package loads none of them.
"""
