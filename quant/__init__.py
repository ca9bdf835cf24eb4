"""Weight quantization for the SANA-WM DiT: NVFP4 and FP8 formats, the precision policy, quantized modules and
their GEMMs. One entry point: `quantize(model, config)`; see docs/quantization.md."""
from quant.attention import enable_fp8_attention_
from quant.fp8 import FP8Tensor, dequantize_fp8, quantize_fp8, quantize_fp8_per_tensor
from quant.gemm import fp8_linear, nvfp4_linear
from quant.linear import (
                            FP8Conv1x1,
                            FP8Linear,
                            FP8TemporalConv,
                            NVFP4Conv1x1,
                            NVFP4Linear,
                            NVFP4TemporalConv,
                            QuantLinear,
)
from quant.nvfp4 import NVFP4Tensor, dequantize_nvfp4, quantize_nvfp4
from quant.policy import FORMATS, SCOPES, PolicyError, QuantPolicy, as_policy, default_policy
from quant.quantize import (
                            load_quantized_state_dict,
                            quantize,
                            quantize_state_dict,
                            quantized_modules,
                            select_modules,
)

__all__ = [
    "FORMATS", "SCOPES", "FP8Conv1x1", "FP8Linear", "FP8TemporalConv", "FP8Tensor", "NVFP4Conv1x1", "NVFP4Linear",
    "NVFP4TemporalConv", "NVFP4Tensor", "PolicyError",
    "QuantLinear", "QuantPolicy", "as_policy", "default_policy", "dequantize_fp8", "dequantize_nvfp4",
    "enable_fp8_attention_",
    "fp8_linear", "load_quantized_state_dict", "nvfp4_linear", "quantize", "quantize_fp8",
    "quantize_fp8_per_tensor", "quantize_nvfp4", "quantize_state_dict", "quantized_modules", "select_modules",
]
