"""Chat templates, training data (tokenised, masked, packed), MiniCPM4 conversion and the inference backends.
Uses sftkit.io only.
"""
