"""A numpy interpreter for ONNX graphs, in float32 and in the seed's 8-bit scheme."""
