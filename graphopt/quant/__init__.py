"""Quantization: where QDQ pairs go, calibration observers, the QDQ rewrite, QAT, fp16.

- ``placement``: the sites ONNX Runtime fuses into int8 kernels;
- ``observers`` / ``calibrate`` / ``qparams``: ranges from calibration data, scales and zeros;
- ``rewrite``: int8 weight buffers and quantize/dequantize pairs in the graph;
- ``quantizer``: calibrate → convert as functions; output agreement with the float graph;
- ``sensitivity``: per-layer sensitivity and the mixed-precision choice;
- ``qat``: the QDQ graph as a trainable fake-quantized module and back;
- ``fp16``: float16 weight storage.
"""

from graphopt.quant.qat import is_quantized, to_deployable, to_trainable

__all__ = ["is_quantized", "to_deployable", "to_trainable"]
