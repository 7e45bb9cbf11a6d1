"""Weight-only block quantization (int4/int8) of linear layers: RTN and GPTQ, the graph form,
and the packed layout of ONNX Runtime's ``MatMulNBits``.

- ``blocks``: the per-block quantizer (round to nearest), dequantization, packing;
- ``gptq``: GPTQ (Frantar et al. 2022) on one layer from its input Hessian;
- ``calibration``: the Hessians ``2 XᵀX`` of chosen linears' inputs on calibration data;
- ``form``: how a quantized linear lives in the FX graph, and how to find it again.
"""

from graphopt.weightonly.blocks import BlockQuant, dequantize, pack_codes, quantize_rtn
from graphopt.weightonly.form import WEIGHT_ONLY_META, QuantizedLinear, find_quantized

__all__ = [
    "WEIGHT_ONLY_META",
    "BlockQuant",
    "QuantizedLinear",
    "dequantize",
    "find_quantized",
    "pack_codes",
    "quantize_rtn",
]
