"""Stage 2: the LTX-2 refiner (spec 6.5).

Stage-1 latents are re-noised to sigma 0.909375 (SDEdit) and refined in 3 distilled Euler steps by the LTX-2
video transformer (diffusers' `LTX2VideoTransformer3DModel` + `LTX2TextConnectors`, Gemma-3 prompts). The first
latent frame, the clean image frame, is the attention sink: never re-noised, never changed.

- `model.py`: loading, placement (CPU offload), FP8, text encoding, and the video-only forward with prefix K/V.
- `refine.py`: single-shot sink-bidirectional refinement, autoregressive blocks with the sink + K/V window, the
  attention patterns per frame / per token, a dense masked reference.
- `schedule.py`: the three-stream pipeline scheduler (stage 1 -> refiner -> decoder).
- `render.py`: `sana-wm render --refine`.
"""
from runtime.refiner.model import LayerKV, LTX2Refiner, RefinerText, ltx2_transformer_config, swap_fp8_linears
from runtime.refiner.refine import (
    DISTILLED_SIGMAS,
    BlockRefiner,
    RefineSettings,
    frame_attention,
    refine,
    refine_blocks,
    refine_clip,
    token_attention_mask,
)
from runtime.refiner.schedule import PipelineScheduler, Stage

__all__ = ["DISTILLED_SIGMAS", "BlockRefiner", "LTX2Refiner", "LayerKV", "PipelineScheduler", "RefineSettings",
           "RefinerText", "Stage", "frame_attention", "ltx2_transformer_config", "refine", "refine_blocks",
           "refine_clip", "swap_fp8_linears", "token_attention_mask"]
