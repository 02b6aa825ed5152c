"""Input checks shared by the matching modules: arrays or tensors in, one clear error out."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ItkmError


def float_matrix(x: Tensor | np.ndarray, what: str) -> Tensor:
    """``x`` as a detached float32 2-d tensor (numpy arrays are wrapped, not copied)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise ItkmError(f"{what} must be a tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        raise ItkmError(f"{what} must be 2-d, got shape {tuple(x.shape)}")
    return x.detach().float()


def int_vector(x: Tensor | np.ndarray | Sequence[int], what: str) -> np.ndarray:
    """``x`` as a 1-d int64 numpy array."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ItkmError(f"{what} must be 1-d, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ItkmError(f"{what} must be integers, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)
