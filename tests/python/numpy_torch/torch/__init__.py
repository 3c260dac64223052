"""A NumPy stand-in for the subset of PyTorch that jarip's exported `modeling_jarip.py` uses.

Tests only (see test_export_hf.py): it runs the exported modeling code in CI, where the real
wheels (gigabytes) are not installed. It is put first on `sys.path` of a subprocess only, so it
never shadows a real torch. Anything not implemented raises NotImplementedError naming the op.
"""

from . import _impl
from ._impl import (  # noqa: F401
    Missing,
    Size,
    Tensor,
    arange,
    cat,
    device,
    dtype,
    float32,
    float64,
    from_numpy,
    int64,
    no_grad,
    ones,
    rsqrt,
    tanh,
    tensor,
)

bool = _impl.bool_
long = int64
__getattr__ = _impl.module_getattr("torch")

from . import nn  # noqa: E402,F401
