"""torch.nn of the NumPy stand-in: modules, parameters and `functional`."""

from .._impl import module_getattr
from . import functional  # noqa: F401
from .modules import Embedding, Linear, Module, ModuleList, Parameter  # noqa: F401

__getattr__ = module_getattr("torch.nn")
