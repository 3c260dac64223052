"""A stand-in for the part of Hugging Face transformers that jarip's exported code uses (tests only).

`PretrainedConfig`, `PreTrainedModel` (over the NumPy torch stand-in), an empty `GenerationMixin`,
and `AutoConfig` / `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`, which load
the directory's own `configuration_*.py` / `modeling_*.py` through config.json's `auto_map` as a
package (so their relative imports resolve as under transformers). Loading is strict: every weight
of the model must be in model.safetensors and nothing else (transformers would only warn).
"""

import importlib
import json
import re
import sys
import types
from pathlib import Path

import torch
from safetensors.numpy import load_file
from torch import nn
from torch._impl import missing, module_getattr

from . import modeling_outputs  # noqa: F401

__getattr__ = module_getattr("transformers")


class PretrainedConfig:
    model_type = ""

    def __init__(self, tie_word_embeddings=True, **kwargs):
        self.tie_word_embeddings = tie_word_embeddings
        for k, v in kwargs.items():
            setattr(self, k, v)

    @classmethod
    def from_dict(cls, d):
        if d.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"config.json is of model_type {d['model_type']!r}, {cls.__name__} of {cls.model_type!r}")
        return cls(**d)

    @classmethod
    def from_pretrained(cls, path):
        return cls.from_dict(json.loads((Path(path) / "config.json").read_text()))


class GenerationMixin:
    def generate(self, *args, **kwargs):
        raise missing("GenerationMixin.generate")


class PreTrainedModel(nn.Module):
    config_class = None
    base_model_prefix = ""

    def __init__(self, config, *inputs, **kwargs):
        if inputs or kwargs:
            raise missing(f"PreTrainedModel.__init__ arguments beyond config: {inputs} {sorted(kwargs)}")
        if not isinstance(config, PretrainedConfig):
            raise TypeError(f"config should be a PretrainedConfig, not {type(config).__name__}")
        super().__init__()
        self.config = config

    def _init_weights(self, module):
        pass

    def post_init(self):
        # transformers: initialize every module's weights, then tie the embeddings if configured.
        self.apply(self._init_weights)
        if self.config.tie_word_embeddings:
            # transformers' tie_weights: a model with an output layer gets the input embedding's
            # parameter there; a model without one (get_output_embeddings() is None) has nothing to tie.
            out = self.get_output_embeddings()
            if out is not None:
                out.weight = self.get_input_embeddings().weight

    @classmethod
    def from_pretrained(cls, path, *, config=None, dtype=None):
        path = Path(path)
        config = config or cls.config_class.from_pretrained(path)
        model = cls(config)
        weights = {k: torch.from_numpy(v) for k, v in load_file(str(path / "model.safetensors")).items()}
        model.load_state_dict(weights, strict=True)
        return model.to(dtype or torch.float32).eval()


def _remote_class(path, ref):
    """`module.Class` of an auto_map entry, imported from `path` as package `transformers_modules.<dir>`."""
    module_name, class_name = ref.split(".")
    root = sys.modules.setdefault("transformers_modules", types.ModuleType("transformers_modules"))
    root.__path__ = []
    pkg_name = "transformers_modules." + re.sub(r"\W", "_", path.resolve().name)
    if pkg_name not in sys.modules:
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = [str(path)]
        sys.modules[pkg_name] = pkg
    return getattr(importlib.import_module(f"{pkg_name}.{module_name}"), class_name)


def _auto_class(path, auto, trust_remote_code):
    path = Path(path)
    if not trust_remote_code:
        raise ValueError(f"{path} holds custom code: load it with trust_remote_code=True")
    ref = json.loads((path / "config.json").read_text())["auto_map"][auto]
    return path, _remote_class(path, ref)


class AutoConfig:
    @staticmethod
    def from_pretrained(path, trust_remote_code=False):
        path, cls = _auto_class(path, "AutoConfig", trust_remote_code)
        return cls.from_pretrained(path)


class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(path, trust_remote_code=False, dtype=None):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        path, cls = _auto_class(path, "AutoModelForCausalLM", trust_remote_code)
        if not isinstance(config, cls.config_class):
            raise ValueError(f"{cls.__name__}.config_class is {cls.config_class.__name__}, config.json gives {type(config).__name__}")
        return cls.from_pretrained(path, config=config, dtype=dtype)
