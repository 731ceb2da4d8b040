"""Fine-tune the backbone's top blocks under the head, fed from the token-state cache.

With ``train_top_layers=k`` the head still reads hidden state ``L`` (its ``layer``), but
the k blocks that produce it are trained: the cache holds the frozen states of layer
``L - k`` (computed once per text, as always), and each training step runs trainable
float32 copies of blocks ``L-k .. L-1`` on them, then the head. The frozen backbone is
never changed, so the cache and every other estimator sharing it stay valid.

The copies are made by deep-copying the backbone's base model with its input embeddings
replaced by a stand-in that passes ``inputs_embeds`` through and its block list replaced
by the k copies, so the architecture's own forward (masks, rotary positions, per-layer
attention types) runs them. Architectures differ in what surrounds the blocks (a final
norm, BERT's position embeddings), so rather than trust that, the copy is checked once
on a probe batch against the frozen model's own states: a mismatch is a clear error, never
a silently different model.

A pickle holds the trained blocks' weights only; the rest is rebuilt from the backbone,
which the fingerprint check guarantees is the one trained on.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch
from torch import nn

from ._early_exit import _blocks
from ._head import RelishHead

# An unpickled model rebuilds its blocks on its first forward; predicts in several threads
# must rebuild them once, not each (the first to finish drops the weights the others read).
_RESTORE_LOCK = threading.Lock()
# Two texts of different lengths, so the check covers padding as well.
_PROBE = ["The film was a delight from the first scene to the very last one.", "Awful."]


class _InputsAsEmbeddings(nn.Module):
    """Stands in for the embeddings: the cached states arrive as ``inputs_embeds``, by
    keyword or (DistilBERT calls ``embeddings(input_ids, inputs_embeds)``) by position."""

    def forward(self, *args: Any, inputs_embeds: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = next((a for a in args if isinstance(a, torch.Tensor)
                                  and a.is_floating_point() and a.ndim == 3), None)
        if inputs_embeds is None:
            raise RuntimeError("the trained top layers take token states, not token ids")
        return inputs_embeds


def _block_stack(model: nn.Module) -> nn.ModuleList:
    stack = _blocks(model, int(model.config.num_hidden_layers))
    if stack is None:
        raise ValueError(
            f"train_top_layers cannot find the transformer blocks of "
            f"{type(model).__name__}; use train_top_layers=0 with this backbone."
        )
    return stack


def _final_norms(model: nn.Module) -> list[nn.Module]:
    """Normalisation layers that are direct children of the base model (applied after the
    blocks in Llama-like models: ``hidden_states[-1]`` has them, earlier layers do not)."""
    return [m for m in model.children() if "norm" in type(m).__name__.lower()]


def copy_top(model: nn.Module, first: int, n_blocks: int, final_norm: bool) -> nn.Module:
    """A float32 copy of ``model`` that runs blocks ``first .. first+n_blocks-1`` only,
    on states given as ``inputs_embeds``; the blocks' copies train, the rest stays frozen."""
    if getattr(model, "is_quantized", False):
        raise ValueError(
            "train_top_layers trains copies of the backbone's blocks and cannot train 8- or "
            "4-bit weights; load the backbone without quantization_config, or use "
            "train_top_layers=0."
        )
    blocks = _block_stack(model)
    embeddings = getattr(model, "embeddings", None)  # BERT-like: words + positions + types
    if not isinstance(embeddings, nn.Module):
        embeddings = model.get_input_embeddings()
    memo: dict[int, Any] = {id(embeddings): _InputsAsEmbeddings()}
    if not final_norm:
        memo.update({id(norm): nn.Identity() for norm in _final_norms(model)})
    if isinstance(getattr(model, "pooler", None), nn.Module):
        memo[id(model.pooler)] = None  # BERT's pooler: unused, and d x d weights
    # One memo for both copies: the blocks and the model share one copied config.
    memo[id(blocks)] = copy.deepcopy(nn.ModuleList(list(blocks)[first:first + n_blocks]), memo)
    top = copy.deepcopy(model, memo)
    offloaded = [name for name, p in top.named_parameters() if p.is_meta]
    if offloaded:  # accelerate keeps offloaded weights out of the module until each forward
        raise ValueError(
            f"train_top_layers={n_blocks} copies blocks {first}..{first + n_blocks - 1} to "
            f"train them, but the backbone's device_map offloads {offloaded[0]} (to the disk "
            "or the CPU, where the model holds no copy to take); place those blocks on a "
            "device in backbone_kwargs['device_map'], or use train_top_layers=0."
        )
    config = top.config
    config.num_hidden_layers = n_blocks
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[first:first + n_blocks]
    config.use_cache = False
    if getattr(model, "hf_device_map", None):  # accelerate's dispatch hooks, copied too
        from accelerate.hooks import remove_hook_from_module

        remove_hook_from_module(top, recurse=True)
    top = top.float().requires_grad_(False)
    _block_stack(top).requires_grad_(True)
    return top


def run_top(top: nn.Module, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The top blocks' output for right-padded ``states`` ``(B, S, d)`` under ``mask``."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape[0], -1)
    return top(inputs_embeds=states.float(), attention_mask=mask.long(),
               position_ids=positions).last_hidden_state


@torch.no_grad()
def _mismatch(top: nn.Module, loaded: Any, first: int, n_blocks: int) -> float:
    """Relative error of the copy against the frozen model's own states on the probe."""
    with loaded.lock:  # the featurizer's early-exit hooks and the tokenizer are per model
        encoded = loaded.tokenizer(_PROBE, padding=True, return_tensors="pt")
        encoded = {name: tensor.to(loaded.input_device) for name, tensor in encoded.items()}
        hidden = loaded.model(**encoded, output_hidden_states=True).hidden_states
    mask = encoded["attention_mask"].bool()
    device = next(top.parameters()).device
    # Check the copy on what it will be fed: each text's states as the cache keeps them
    # (float16, or bfloat16 where they exceed float16's range, as Gemma 3's do).
    from ._featurizer import _half

    source = hidden[first]
    inputs = torch.zeros(source.shape, dtype=torch.float32, device=source.device)
    for row, real in enumerate(mask):
        inputs[row, real] = _half(source[row, real]).float()
    inputs = inputs.to(device)
    reference = hidden[first + n_blocks].float().to(device)
    was_training = top.training
    output = run_top(top.eval(), inputs, mask.to(device))
    top.train(was_training)
    real = mask.to(device)
    return float((output[real] - reference[real]).norm() / reference[real].norm())


def checked_top(loaded: Any, first: int, n_blocks: int, device: torch.device) -> nn.Module:
    """:func:`copy_top` with the final-norm question settled by the probe, on ``device``."""
    n_layers = loaded.n_hidden_states - 1
    # hidden_states[-1] usually has the final norm applied, the others not.
    guesses = [True, False] if first + n_blocks == n_layers else [False, True]
    tolerance = 1e-2 if loaded.dtype == torch.float32 else 5e-2
    errors = []
    for final_norm in guesses:
        # Under the backbone's lock: the featurizer hangs an early-exit hook on a block while
        # it holds it, and a copy taken then would stop at that block on every forward.
        with loaded.lock:
            top = copy_top(loaded.model, first, n_blocks, final_norm)
        top = top.to(device)
        try:
            errors.append(_mismatch(top, loaded, first, n_blocks))
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as error:
            # Run apart, some blocks fail outright (ELECTRA projects its embeddings after
            # the stand-in): unsupported, said as such, not torch's shape error.
            raise ValueError(
                f"train_top_layers={n_blocks} is not supported for "
                f"{type(loaded.model).__name__}: its blocks cannot be run apart from the rest "
                f"of the model ({type(error).__name__}: {error}); use train_top_layers=0 "
                "with this backbone.") from error
        if errors[-1] <= tolerance:
            return top
    raise ValueError(
        f"train_top_layers={n_blocks} is not supported for {type(loaded.model).__name__}: "
        f"its blocks, run apart from the rest of the model, do not reproduce its own states "
        f"(relative error {min(errors):.3g}); use train_top_layers=0 with this backbone."
    )


def check_supported(featurizer: Any, n_blocks: int) -> None:
    """Refuse blocks that cannot be trained apart before the LLM runs over the training
    texts: :class:`TopLayersHead` finds out only after featurization, which on a real
    corpus wasted the whole pass (into states of a layer no other fit reads). The probe
    costs a copy of ``n_blocks`` blocks and a forward over two short texts."""
    loaded = featurizer.loaded
    # A plain int: transformers' strict configs refuse numpy's (GridSearchCV's).
    checked_top(loaded, featurizer.layer, int(n_blocks), loaded.device)


def moved_parameter(weight: nn.Parameter, device: torch.device) -> nn.Parameter:
    """``weight`` on ``device``, still a trainable Parameter (itself where torch can).

    Under predict's no_grad a copying ``.to()`` (CPU to CUDA) returns a plain tensor, which
    the next pickle would leave out as untrained and the optimizer would not reference.
    """
    if weight.device == device:
        return weight
    with torch.no_grad():
        moved = weight.data.to(device)
        try:
            weight.data = moved  # what nn.Module.to does: CPU and CUDA tensors swap data
        except RuntimeError:  # tensor kinds that cannot swap (meta): a new Parameter
            return nn.Parameter(moved, requires_grad=weight.requires_grad)
    return weight


class TopLayersHead(nn.Module):
    """Trainable copies of the backbone's blocks ``first_block ..`` and then a RELISH head.

    Parameters
    ----------
    featurizer : LLMFeaturizer
        Names the backbone the blocks are copied from (pickled as its identity only).
    first_block, n_blocks : int
        Which blocks to train; the input is hidden state ``first_block``.
    **head_kwargs
        :class:`RelishHead`'s parameters.
    """

    def __init__(self, featurizer: Any, first_block: int, n_blocks: int,
                 **head_kwargs: Any) -> None:
        super().__init__()
        self.featurizer = featurizer
        self.first_block = first_block
        self.n_blocks = n_blocks
        self.head = RelishHead(**head_kwargs)
        loaded = featurizer.loaded
        self.top = checked_top(loaded, first_block, n_blocks, loaded.device)

    def forward(self, token_states: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self._modules.get("top") is None:
            with _RESTORE_LOCK:
                if self._modules.get("top") is None:  # another thread may have restored it
                    self._restore_top()
        if attention_mask is None:
            attention_mask = torch.ones(token_states.shape[:2], dtype=torch.bool,
                                        device=token_states.device)
        mask = attention_mask.to(torch.bool)
        return self.head(run_top(self.top, token_states, mask), mask)

    # -- pickling: the trained blocks, not the frozen model around them --------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        modules = dict(state["_modules"])
        top = modules.pop("top", None)
        state["_modules"] = modules
        if top is not None:
            # The Parameter objects themselves: the optimizer's references to them are then
            # the same objects in the pickle (stored once, and still trained after loading).
            state["_top_weights"] = {name: p for name, p in top.named_parameters()
                                     if p.requires_grad}
        return state

    def _restore_top(self) -> None:
        device = self.head.output.weight.device
        top = checked_top(self.featurizer.loaded, self.first_block, self.n_blocks, device)
        weights = self.__dict__["_top_weights"]  # dropped only once restored
        trained = {name for name, p in top.named_parameters() if p.requires_grad}
        if set(weights) != trained:
            raise ValueError(
                "The model file's trained top layers do not match the backbone's blocks; "
                "the file is damaged or from another backbone. Refit the model."
            )
        for name, weight in weights.items():
            owner, _, leaf = name.rpartition(".")
            module = top.get_submodule(owner)
            if module._parameters[leaf].shape != weight.shape:
                raise ValueError(
                    f"The model file's trained weight {name} has shape {tuple(weight.shape)}, "
                    f"the backbone's {tuple(module._parameters[leaf].shape)}; refit the model."
                )
            module._parameters[leaf] = moved_parameter(weight, device)
        self.top = top.train(self.training)
        del self.__dict__["_top_weights"]
