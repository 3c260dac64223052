"""The NumPy stand-in for torch: tensors, dtypes and the few free functions `modeling_jarip.py` calls.

Each op follows PyTorch's semantics (shapes, broadcasting, type promotion of the cases that arise)
and is written plainly with NumPy. Anything else raises `Missing`, a NotImplementedError that names
the op, so a modeling file that starts to use a new op fails the test instead of passing untested.
There is no autograd: every computation runs as under `torch.no_grad()`.
"""

import builtins
import math

import numpy as np


class Missing(NotImplementedError, AttributeError):
    """An op the stand-in does not have. Also an AttributeError, so `hasattr` keeps its meaning."""


def missing(what):
    return Missing(
        f"numpy_torch: {what} is not implemented by the NumPy stand-in for torch/transformers "
        "(tests/python/numpy_torch); add it there, written plainly with PyTorch's semantics"
    )


def module_getattr(module_name):
    """A module-level `__getattr__` that names the missing attribute."""

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise missing(f"{module_name}.{name}")

    return __getattr__


class dtype:
    def __init__(self, name, np_dtype):
        self.name = name
        self.np = np.dtype(np_dtype)
        self.is_floating_point = self.np.kind == "f"

    def __repr__(self):
        return f"torch.{self.name}"


float32 = dtype("float32", np.float32)
float64 = dtype("float64", np.float64)
int64 = dtype("int64", np.int64)
bool_ = dtype("bool", np.bool_)
_DTYPES = {d.np: d for d in (float32, float64, int64, bool_)}


def _np_dtype(d):
    if d is None:
        return None
    if not isinstance(d, dtype):
        raise missing(f"dtype {d!r}")
    return d.np


class device:
    def __init__(self, type="cpu"):
        if str(type) != "cpu":
            raise missing(f"device {type!r} (the stand-in computes on the CPU only)")
        self.type = "cpu"

    def __eq__(self, other):
        return isinstance(other, device) or other == "cpu"

    def __hash__(self):
        return hash("cpu")

    def __repr__(self):
        return "device(type='cpu')"


_CPU = device()


def _check_device(d):
    if d is not None:
        device(d.type if isinstance(d, device) else d)


class Size(tuple):
    def numel(self):
        return math.prod(self)


class no_grad:
    """There are no gradients here; kept as a context manager and decorator for the API."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, fn):
        def wrapped(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        return wrapped


def _is_float(a):
    return a.dtype.kind == "f"


def _wrap(a):
    a = np.asarray(a)
    if a.dtype not in _DTYPES:
        raise missing(f"tensors of NumPy dtype {a.dtype}")
    return Tensor(a)


def _binary(x, y, op, name):
    """`op(x, y)` for tensors and Python scalars, with PyTorch's type promotion."""
    scalar = (builtins.bool, int, float)
    if isinstance(x, Tensor) and isinstance(y, Tensor):
        a, b = x._a, y._a
        if a.dtype != b.dtype:
            if (a.ndim == 0) != (b.ndim == 0):
                raise missing(f"type promotion of a 0-dim and a sized tensor of other dtypes in {name}")
            if _is_float(a) and not _is_float(b):
                b = b.astype(a.dtype)
            elif _is_float(b) and not _is_float(a):
                a = a.astype(b.dtype)
            # float32 with float64 gives float64 and bool with int64 gives int64, as in torch.
    elif isinstance(x, Tensor) and isinstance(y, scalar):
        a, b = x._a, y
        if isinstance(y, float) and not _is_float(a):
            a = a.astype(np.float32)  # torch's default float dtype
    elif isinstance(y, Tensor) and isinstance(x, scalar):
        a, b = x, y._a
        if isinstance(x, float) and not _is_float(b):
            b = b.astype(np.float32)
    else:
        raise missing(f"{name} of {type(x).__name__} and {type(y).__name__}")
    return _wrap(op(a, b))


def _true_divide(a, b):
    # Integer over integer divides in float32 in torch.
    a_int = not (isinstance(a, float) or (isinstance(a, np.ndarray) and _is_float(a)))
    b_int = not (isinstance(b, float) or (isinstance(b, np.ndarray) and _is_float(b)))
    if a_int and b_int:
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.true_divide(a, b)


def _floating(t, name):
    if not t.dtype.is_floating_point:
        raise missing(f"{name} of a {t.dtype} tensor")
    return t._a


class Tensor:
    __array_ufunc__ = None  # NumPy defers to the reflected operators below
    __hash__ = object.__hash__

    def __init__(self, a):
        if not isinstance(a, np.ndarray) or a.dtype not in _DTYPES:
            raise TypeError("numpy_torch.Tensor wraps a NumPy array: use torch.tensor or torch.from_numpy")
        self._a = a

    def __getattr__(self, name):
        if name.startswith("__") or name == "_a":
            raise AttributeError(name)
        raise missing(f"Tensor.{name}")

    # Metadata.
    @property
    def shape(self):
        return Size(self._a.shape)

    @property
    def dtype(self):
        return _DTYPES[self._a.dtype]

    @property
    def device(self):
        return _CPU

    @property
    def ndim(self):
        return self._a.ndim

    def dim(self):
        return self._a.ndim

    def __len__(self):
        if self._a.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self._a)

    def __repr__(self):
        return f"tensor({self._a!r}, dtype={self.dtype})"

    # Leaving the stand-in.
    def numpy(self):
        return self._a

    def item(self):
        if self._a.size != 1:
            raise RuntimeError(f"a Tensor with {self._a.size} elements cannot be converted to Scalar")
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def __bool__(self):
        if self._a.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with {self._a.size} values is ambiguous")
        return builtins.bool(self._a.item())

    # Arithmetic.
    def __add__(self, o):
        return _binary(self, o, np.add, "+")

    def __radd__(self, o):
        return _binary(o, self, np.add, "+")

    def __sub__(self, o):
        return _binary(self, o, np.subtract, "-")

    def __rsub__(self, o):
        return _binary(o, self, np.subtract, "-")

    def __mul__(self, o):
        return _binary(self, o, np.multiply, "*")

    def __rmul__(self, o):
        return _binary(o, self, np.multiply, "*")

    def __truediv__(self, o):
        return _binary(self, o, _true_divide, "/")

    def __rtruediv__(self, o):
        return _binary(o, self, _true_divide, "/")

    def __pow__(self, o):
        return _binary(self, o, np.power, "**")

    def __rpow__(self, o):
        return _binary(o, self, np.power, "**")

    def pow(self, exponent):
        return self**exponent

    def __neg__(self):
        if self.dtype is bool_:
            raise RuntimeError("negation of a bool tensor is not supported; use ~ or logical_not")
        return Tensor(np.negative(self._a))

    def __matmul__(self, o):
        if not isinstance(o, Tensor):
            raise missing(f"@ with {type(o).__name__}")
        if self.dtype is not o.dtype or not self.dtype.is_floating_point:
            raise RuntimeError(f"expected both matmul operands to have the same float dtype, got {self.dtype} and {o.dtype}")
        return Tensor(np.matmul(self._a, o._a))

    def __eq__(self, o):
        return _binary(self, o, np.equal, "==")

    def __ne__(self, o):
        return _binary(self, o, np.not_equal, "!=")

    def __lt__(self, o):
        return _binary(self, o, np.less, "<")

    def __le__(self, o):
        return _binary(self, o, np.less_equal, "<=")

    def __gt__(self, o):
        return _binary(self, o, np.greater, ">")

    def __ge__(self, o):
        return _binary(self, o, np.greater_equal, ">=")

    # Element-wise functions.
    def cos(self):
        return Tensor(np.cos(_floating(self, "cos")))

    def sin(self):
        return Tensor(np.sin(_floating(self, "sin")))

    def square(self):
        return Tensor(np.multiply(self._a, self._a))

    # Reductions.
    def mean(self, dim=None, keepdim=False):
        return Tensor(np.asarray(np.mean(_floating(self, "mean"), axis=dim, keepdims=keepdim)))

    def all(self):
        return Tensor(np.asarray(np.all(self._a)))

    # Conversions.
    def to(self, dtype_):
        if not isinstance(dtype_, dtype):
            raise missing(f"Tensor.to({dtype_!r}) (only a dtype is supported)")
        return self if self.dtype is dtype_ else Tensor(self._a.astype(dtype_.np))

    def float(self):
        return self.to(float32)

    # Shapes.
    def view(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            return Tensor(np.reshape(self._a, shape, copy=False))
        except ValueError as e:  # as torch: view never copies
            raise RuntimeError(f"view size {shape} is not compatible with the tensor's strides: use .reshape(...) ({e})")

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Tensor(np.reshape(self._a, shape))

    def transpose(self, dim0, dim1):
        return Tensor(np.swapaxes(self._a, dim0, dim1))

    def repeat_interleave(self, repeats, dim):
        if not isinstance(repeats, int):
            raise missing("Tensor.repeat_interleave with tensor repeats")
        return Tensor(np.repeat(self._a, repeats, axis=dim))

    def tril(self, diagonal=0):
        if self._a.ndim < 2:
            raise RuntimeError("tril: input tensor must have at least 2 dimensions")
        return Tensor(np.tril(self._a, diagonal))

    def __getitem__(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        for k in keys:
            if not (k is None or k is Ellipsis or isinstance(k, (int, slice, Tensor))):
                raise missing(f"indexing with {type(k).__name__}")
        keys = tuple(k._a if isinstance(k, Tensor) else k for k in keys)
        return _wrap(self._a[keys])


def tensor(data, dtype=None, device=None):
    _check_device(device)
    a = np.array(data)
    if dtype is not None:
        a = a.astype(_np_dtype(dtype))
    elif a.dtype.kind in "iu":
        a = a.astype(np.int64)
    elif a.dtype.kind == "f":
        a = a.astype(np.float32)  # torch's default float dtype
    return _wrap(a)


def from_numpy(a):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(a).__name__})")
    return _wrap(a)


def ones(*size, dtype=None, device=None):
    _check_device(device)
    size = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
    return Tensor(np.ones(size, dtype=_np_dtype(dtype) or np.float32))


def arange(start, end=None, step=1, *, dtype=None, device=None):
    _check_device(device)
    if end is None:
        start, end = 0, start
    if dtype is None:
        ints = all(isinstance(v, int) for v in (start, end, step))
        np_dtype = np.int64 if ints else np.float32
    else:
        np_dtype = _np_dtype(dtype)
    return Tensor(np.arange(start, end, step, dtype=np_dtype))


def cat(tensors, dim=0):
    tensors = list(tensors)
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise TypeError("cat expects a non-empty sequence of tensors")
    kinds = {t.dtype.is_floating_point for t in tensors}
    if len({t.dtype for t in tensors}) > 1 and kinds != {True}:
        raise missing("cat of tensors mixing integer and float dtypes")
    return Tensor(np.concatenate([t._a for t in tensors], axis=dim))


def rsqrt(x):
    return Tensor(1.0 / np.sqrt(_floating(x, "rsqrt")))


def tanh(x):
    return Tensor(np.tanh(_floating(x, "tanh")))
