"""deepcompress: Deep Compression (prune, share, Huffman) and 8-bit quantization for ONNX models.

Kept import-light on purpose: `deepcompress --help` must not import numpy or onnx.
"""

__version__ = "0.1.0"
