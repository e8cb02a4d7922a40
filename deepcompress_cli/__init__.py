"""deepcompress: Deep Compression (prune, share, Huffman) and 8-bit quantization for ONNX models.

    import deepcompress_cli as dc
    report = dc.compress("model.onnx", "model.dcz", train="train.npz")

The API lives in `api.py` and is loaded on first use (PEP 562): kept import-light on purpose,
`deepcompress --help` must not import numpy or onnx.
"""

__version__ = "0.1.0"

_API = ("load", "info", "pack", "export", "prune", "share", "quantize", "huffman", "svd", "compress", "bench",
        "prepare_data")
__all__ = ["DczError", "GateFailed", "__version__", *_API]


def __getattr__(name):
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in ("DczError", "GateFailed"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
