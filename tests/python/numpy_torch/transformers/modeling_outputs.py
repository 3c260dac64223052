"""transformers.modeling_outputs of the NumPy stand-in."""

from dataclasses import dataclass, fields

from torch._impl import module_getattr

__getattr__ = module_getattr("transformers.modeling_outputs")


class ModelOutput:
    """Fields by attribute or name; by position over the fields that are set (as transformers does)."""

    def __getitem__(self, k):
        if isinstance(k, str):
            return getattr(self, k)
        return self.to_tuple()[k]

    def to_tuple(self):
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)


@dataclass
class CausalLMOutputWithPast(ModelOutput):
    loss: object = None
    logits: object = None
    past_key_values: object = None
    hidden_states: object = None
    attentions: object = None
