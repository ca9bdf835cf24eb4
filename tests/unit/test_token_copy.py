"""The streaming cache's K/V write (`kernels.token_copy.copy_tokens`): the Triton kernel (interpreter on CPU,
CUDA on a GPU run) writes exactly the reference's slice of the packed buffer, from contiguous and strided sources,
and leaves every other element alone."""
from __future__ import annotations

import torch

from tests.triton_setup import DEVICE, needs_triton

# The kernel modules below must see the interpreter switch tests.triton_setup sets.
# isort: split

import pytest

from kernels.token_copy import copy_tokens, copy_tokens_reference


def _parts(B, H, n, D, seed):
    g = torch.Generator().manual_seed(seed)
    head_major = [torch.randn(B, H, n, D, generator=g).to(DEVICE) for _ in range(3)]
    # the main V as the softmax block hands it: a head view of a token-major [B, n, H * D] projection output
    token_major = torch.randn(B, n, H * D, generator=g).to(DEVICE)
    strided = token_major.view(B, n, H, D).permute(0, 2, 1, 3)
    return [head_major[0], head_major[1], strided, head_major[2]]


@needs_triton
@pytest.mark.parametrize("B,H,n,D,start", [(1, 3, 45, 112, 20), (2, 2, 7, 16, 0), (1, 1, 33, 5, 67)],
                         ids=["partial-block-D112", "batch2-at-0", "D5-at-end"])
def test_triton_copy_equals_reference_and_touches_nothing_else(B, H, n, D, start):
    parts = _parts(B, H, n, D, seed=n)
    tokens = start + n + (0 if start == 67 else 11)
    buffer = torch.randn(4, B, H, tokens, D, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    want = buffer.clone()
    copy_tokens_reference(want, start, parts)
    got = buffer.clone()
    copy_tokens(got, start, parts, impl="triton")
    assert torch.equal(got, want)
    assert not torch.equal(want, buffer)                       # the slice changed, and only through parts
    outside = torch.ones_like(buffer, dtype=torch.bool)
    outside[:, :, :, start:start + n] = False
    assert torch.equal(got[outside], buffer[outside])


def test_copy_tokens_rejects_what_does_not_fit():
    parts = _parts(1, 2, 5, 8, seed=0)
    buffer = torch.zeros(4, 1, 2, 9, 8, device=DEVICE)
    with pytest.raises(ValueError, match="outside the buffer"):
        copy_tokens(buffer, 6, parts)
    with pytest.raises(ValueError, match="does not fit"):
        copy_tokens(buffer, 0, [p[..., :4] for p in parts])
    with pytest.raises(ValueError, match="one part per stream"):
        copy_tokens(buffer, 0, parts[:3])
