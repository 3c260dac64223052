"""nn.Module and the layers `modeling_jarip.py` builds, for the NumPy stand-in."""

import numpy as np

from .._impl import Tensor, dtype, missing
from . import functional as F


class Parameter(Tensor):
    def __init__(self, data):
        if not isinstance(data, Tensor):
            raise TypeError("Parameter wraps a Tensor")
        super().__init__(data._a)


def _empty(*shape):
    # torch.empty: uninitialized. NaN makes any weight that the checkpoint did not set show.
    return Parameter(Tensor(np.full(shape, np.nan, dtype=np.float32)))


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign to a Module before Module.__init__() call")
        params, mods = self._parameters, self._modules
        if isinstance(value, Parameter):
            mods.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            self.__dict__.pop(name, None)
            mods[name] = value
        elif name in params or name in mods:
            raise TypeError(f"cannot assign {type(value).__name__} as {name!r}, a parameter or child module")
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        if "_parameters" in d and name in d["_parameters"]:
            return d["_parameters"][name]
        if "_modules" in d and name in d["_modules"]:
            return d["_modules"][name]
        if name.startswith("__"):
            raise AttributeError(name)
        raise missing(f"{type(self).__name__}.{name} (no such attribute; if an nn.Module method, not in the stand-in)")

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function')

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix=""):
        seen = set()
        for mod_prefix, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def state_dict(self):
        return dict(self.named_parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copies each tensor into the parameter of that name (cast to its dtype), as torch does."""
        own = self.state_dict()
        missing_keys = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        errors = []
        if strict and (missing_keys or unexpected):
            errors.append(f"missing keys {missing_keys}, unexpected keys {unexpected}")
        for name, value in state_dict.items():
            if name not in own:
                continue
            if not isinstance(value, Tensor):
                raise TypeError(f"load_state_dict: {name} is a {type(value).__name__}, not a Tensor")
            if value.shape != own[name].shape:
                errors.append(f"size mismatch for {name}: checkpoint {tuple(value.shape)}, model {tuple(own[name].shape)}")
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: " + "; ".join(errors))
        for name, value in state_dict.items():
            if name in own:
                own[name]._a = value._a.astype(own[name]._a.dtype, copy=True)
        return missing_keys, unexpected

    def to(self, dtype_):
        if not isinstance(dtype_, dtype):
            raise missing(f"Module.to({dtype_!r}) (only a dtype is supported)")
        for p in self.parameters():
            if p.dtype.is_floating_point:
                p._a = p._a.astype(dtype_.np)
        return self

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _empty(out_features, in_features)
        if bias:
            self.bias = _empty(out_features)
        else:
            self.bias = None

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = _empty(num_embeddings, embedding_dim)

    def forward(self, input):
        return F.embedding(input, self.weight)


class ModuleList(Module):
    def __init__(self, modules=None):
        super().__init__()
        for m in modules or ():
            self.append(m)

    def append(self, module):
        self._modules[str(len(self._modules))] = module
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, i):
        if not isinstance(i, int):
            raise missing("ModuleList slicing")
        return list(self._modules.values())[i]
