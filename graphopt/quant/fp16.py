"""FP16 weight storage: every float32 parameter stored as float16 and cast back where read.

Half the bytes on disk and in the ONNX file, and error at float16's rounding (relative
≈ 5e-4 per weight). Compute stays float32: ONNX Runtime's CPU provider has few float16
kernels, so float16 *arithmetic* would run slower there, not faster; the cast of a constant
is folded once when the session loads.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch.fx import GraphModule

from graphopt.ir import get_tensor, set_tensor
from graphopt.quant.rewrite import QUANT_META

__all__ = ["store_weights_fp16"]


def store_weights_fp16(gm: GraphModule, skip: Collection[str] = ()) -> int:
    """Convert float32 ``get_attr`` tensors (not under ``skip`` prefixes); returns how many."""
    converted = 0
    for node in list(gm.graph.nodes):
        tensor = get_tensor(gm, node)
        target = str(node.target)
        if tensor is None or tensor.dtype != torch.float32 or not node.users:
            continue
        if any(target == s or target.startswith(s + ".") for s in skip):
            continue
        is_param = isinstance(tensor, torch.nn.Parameter)
        set_tensor(gm, target, tensor.to(torch.float16), parameter=is_param)
        with gm.graph.inserting_after(node):
            cast = gm.graph.call_function(
                torch.ops.aten._to_copy.default, (node,), {"dtype": torch.float32}
            )
        cast.meta[QUANT_META] = "fp16"
        node.replace_all_uses_with(cast, delete_user_cb=lambda user, c=cast: user is not c)
        converted += 1
    return converted
