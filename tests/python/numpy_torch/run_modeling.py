"""Runs an export's own modeling code on the NumPy stand-ins for torch and transformers.

Run as a script (by test_export_hf.py), so that this directory comes first on sys.path of its own
interpreter: `python3 run_modeling.py EXPORT_DIR float32|float64 < {"prompt": [...], "continuation": [...]}`.
Loads EXPORT_DIR as transformers would (AutoModelForCausalLM, trust_remote_code, config.json's
auto_map → the directory's configuration_jarip.py and modeling_jarip.py) and prints JSON:
- torch: the file `import torch` resolved to (the stand-in's);
- logits: [T, V] of one forward over the prompt, with labels (so the loss path runs) and an
  all-ones attention mask;
- loss: that forward's loss;
- steps: the last-position logits of a forward over the prompt with use_cache=True, then of each
  continuation token but the last fed alone with the returned past_key_values.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    export_dir, dtype = sys.argv[1], sys.argv[2]
    req = json.load(sys.stdin)
    prompt, cont = req["prompt"], req["continuation"]
    model = AutoModelForCausalLM.from_pretrained(export_dir, trust_remote_code=True, dtype=getattr(torch, dtype))
    ids = torch.tensor([prompt])
    with torch.no_grad():
        full = model(ids, labels=ids, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        out = model(ids, use_cache=True)
        steps = [out.logits[0, -1]]
        for tok in cont[:-1]:
            out = model(torch.tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits[0, -1])
    json.dump(
        {
            "torch": torch.__file__,
            "logits": full.logits[0].numpy().tolist(),
            "loss": full.loss.item(),
            "steps": [s.numpy().tolist() for s in steps],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
