"""Run a backbone only as deep as the layer that is read.

RELISH reads one hidden layer, by default the middle one, so the blocks above it are
wasted work: stopping the forward pass there halves the LLM's cost at ``layer=0.5``.
A forward hook on the last block needed raises with that block's output, which ends
the pass; nothing in the model is changed.

Architectures differ in what ``hidden_states[i]`` holds (most: the output of block
``i - 1``, and entry 0 the first block's input; the last entry often has the final norm
applied, so it always takes the full pass). Rather than trust that per architecture,
the first batch at each layer is run both ways and early exit is used only if the states
agree.
"""

from __future__ import annotations

from typing import Any

import torch

from ._backbones import LoadedBackbone


class _ReachedLayer(Exception):
    """Carries a block's output out of the forward pass that it ends."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def _blocks(model: Any, n_layers: int) -> torch.nn.ModuleList | None:
    """The model's stack of transformer blocks, if exactly one list of that length exists."""
    stacks = [m for m in model.modules()
              if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    return stacks[0] if len(stacks) == 1 else None


def _full_pass(loaded: LoadedBackbone, inputs: dict, layer: int) -> torch.Tensor:
    return loaded.model(**inputs, output_hidden_states=True).hidden_states[layer]


def _early_exit(block: torch.nn.Module, loaded: LoadedBackbone, inputs: dict,
                before: bool = False) -> torch.Tensor | None:
    """The block's output (its input with ``before``), or None if the forward pass never
    ran that block."""
    def stop(module, args, output):
        raise _ReachedLayer(output[0] if isinstance(output, tuple) else output)

    def stop_before(module, args, kwargs):
        raise _ReachedLayer(args[0] if args else kwargs.get("hidden_states"))

    handle = (block.register_forward_pre_hook(stop_before, with_kwargs=True) if before
              else block.register_forward_hook(stop))
    try:
        loaded.model(**inputs)
    except _ReachedLayer as reached:
        return reached.hidden
    finally:
        handle.remove()
    return None


def hidden_states_at(loaded: LoadedBackbone, inputs: dict, layer: int) -> torch.Tensor:
    """``model(**inputs, output_hidden_states=True).hidden_states[layer]``, computed only
    as deep as needed. The caller holds ``loaded.lock`` (hooks are per model)."""
    n_layers = loaded.n_hidden_states - 1
    blocks = _blocks(loaded.model, n_layers)
    if blocks is None or not 0 <= layer < n_layers:  # the last layer is often normed
        return _full_pass(loaded, inputs, layer)
    verdict = loaded.early_exit_ok.get(layer)
    if verdict is False:
        return _full_pass(loaded, inputs, layer)
    # Layer 0, the embeddings, is what the first block is given: stop before it runs
    # (train_top_layers over every block of MiniLM reads it).
    hidden = (_early_exit(blocks[layer - 1], loaded, inputs) if layer
              else _early_exit(blocks[0], loaded, inputs, before=True))
    if hidden is not None:
        # Sharded by device_map, the block may sit on another GPU; the full pass returns
        # its hidden states on the input's device (accelerate's io_same_device): so here too.
        hidden = hidden.to(next(iter(inputs.values())).device)
    if verdict is None:
        reference = _full_pass(loaded, inputs, layer)
        agrees = (hidden is not None and hidden.shape == reference.shape
                  and torch.allclose(hidden.float(), reference.float(), rtol=1e-3, atol=1e-3))
        loaded.early_exit_ok[layer] = agrees
        return hidden if agrees else reference
    return hidden if hidden is not None else _full_pass(loaded, inputs, layer)
