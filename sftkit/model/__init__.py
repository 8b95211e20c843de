"""Chat templates, training data (tokenised, masked, packed), MiniCPM4 conversion, the trainer's parts
(training.py, run by train/train.py), the inference backends and infer/infer.py's stage (infer_stage.py).
Uses sftkit.io only.
"""
