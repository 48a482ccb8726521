"""One header for a tensor, wherever distcomm announces one (gathers, point to point, all-to-all):
its dtype code, its number of dimensions and its shape, in int64 words, with one limit on
dimensions and one reading that checks every field before anything is allocated.

==============  ===============================================================
words           meaning
==============  ===============================================================
0               number of dimensions, ``0..MAX_DIMENSIONS`` (``-1``: no tensor)
1               dtype code (:data:`distcomm.values.dtypes.DTYPES`) (``-1``: no tensor)
2-17            the dimensions, then ``-1`` up to ``MAX_DIMENSIONS``
==============  ===============================================================
"""

from __future__ import annotations

import numpy as np
import torch

from distcomm.errors import WireFormatError
from distcomm.values.dtypes import DTYPE_CODES, DTYPES

MAX_DIMENSIONS = 16
"""The most dimensions a tensor distcomm announces may have."""
WORDS = 2 + MAX_DIMENSIONS
"""A header's size in int64 words."""


def unsupported(tensor: torch.Tensor, operation: str) -> str | None:
    """Why no header can describe ``tensor`` (a dtype without a code, too many dimensions), or ``None``."""
    if tensor.dtype not in DTYPE_CODES:
        return f"{operation} does not support dtype {tensor.dtype}; convert the tensor first"
    if tensor.dim() > MAX_DIMENSIONS:
        return f"{operation} takes at most {MAX_DIMENSIONS} dimensions, got {tensor.dim()}"
    return None


def header_words(tensor: torch.Tensor | None) -> np.ndarray:
    """``tensor``'s header (which :func:`unsupported` accepts); ``None`` gives the header of no tensor."""
    words = np.full(WORDS, -1, dtype="<i8")
    if tensor is not None:
        words[0], words[1] = tensor.dim(), DTYPE_CODES[tensor.dtype]
        words[2 : 2 + tensor.dim()] = tensor.shape
    return words


def read_tensor_header(words: np.ndarray | list[int], sender: str, limit: int) -> tuple[torch.dtype, torch.Size, int] | None:
    """The dtype, shape and byte count a header announces (``None``: no tensor), each field checked:
    anything outside the format, or more than ``limit`` bytes, raises
    :class:`~distcomm.errors.WireFormatError` naming ``sender`` (``"all_gather: rank 1"``)."""
    values = [int(w) for w in words[:WORDS]]
    dims, code = values[0], values[1]
    if dims == -1 and code == -1:
        return None
    shape = values[2 : 2 + dims] if 0 <= dims <= MAX_DIMENSIONS else []
    if not (0 <= dims <= MAX_DIMENSIONS and 0 <= code < len(DTYPES)) or any(d < 0 for d in shape):
        raise WireFormatError(f"{sender} sent a tensor header with {dims} dimensions, dtype code {code}, shape {shape}")
    nbytes = DTYPES[code].itemsize
    for n in shape:
        nbytes *= n
    if nbytes > limit:
        raise WireFormatError(
            f"{sender} announced a tensor of shape {shape} ({nbytes} bytes), over the limit of {limit} bytes a "
            "peer may make this rank allocate (the object codec's max_bytes); nothing was allocated for it"
        )
    return DTYPES[code], torch.Size(shape), nbytes
