"""Fine-tuning baselines for the quality benchmark: what a practitioner would run instead.

- ``finetune``: full fine-tuning of MiniLM with a regression head, the usual recipe
  (transformers' ``AutoModelForSequenceClassification(num_labels=1)``, MSE loss): every
  weight trains.
- ``lora``: LoRA adapters (``peft``; rank 16, alpha 32, dropout 0.05, on the attention's
  q/k/v/o projections) on SmolLM2, with an MLP regression head on the masked mean of the
  last layer's states: the paper's "LoRA + MLP" regime. Only adapters and head train.

Both tune on the training split only, as every method of the benchmark does: 10% of it is
held out (the share RELISH's early stopping holds out); for each learning rate of a small
grid the model trains for up to ``epochs`` epochs (AdamW, batch 16, 10% linear warm-up then
linear decay, gradients clipped at 1), and the (learning rate, epoch) with the lowest
hold-out MSE is kept, as RELISH keeps its best epoch. Targets are standardised on the
training part. Fit seconds cover the whole grid: that is what choosing costs.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from sklearn_relish import RelishTextRegressor
from sklearn_relish._backbones import MINILM, SMOLLM2, resolve_backbone

BATCH_SIZE = 16
MAX_LENGTH = 128
WARMUP = 0.1
WEIGHT_DECAY = 0.01
PREDICT_BATCH = 64
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LORA_HEAD_WIDTH = 256

BACKBONES = {"finetune": MINILM, "lora": SMOLLM2}
# The grids a full run searches; a job's config holds its grid, so each row says what was
# searched (and rows of another grid never pass for these).
RECIPES = {"finetune": {"lrs": [2e-5, 5e-5, 1e-4], "epochs": 4},
           "lora": {"lrs": [1e-4, 3e-4], "epochs": 3}}
QUICK_RECIPES = {"finetune": {"lrs": [1e-4], "epochs": 1},
                 "lora": {"lrs": [3e-4], "epochs": 1}}


class SequenceRegressor(nn.Module):
    """MiniLM (or any encoder) with transformers' own regression head: one output."""

    def __init__(self, source: str) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, dtype=torch.float32)

    def forward(self, input_ids, attention_mask, **rest) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          **rest).logits.squeeze(-1)


class LoraPooledRegressor(nn.Module):
    """A causal LM with LoRA adapters; an MLP on the masked mean of its last layer."""

    def __init__(self, source: str) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModel

        base = AutoModel.from_pretrained(source, dtype=torch.float32)
        self.backbone = get_peft_model(base, LoraConfig(**LORA))
        width = base.config.hidden_size
        self.head = nn.Sequential(nn.Linear(width, LORA_HEAD_WIDTH), nn.GELU(),
                                  nn.Linear(LORA_HEAD_WIDTH, 1))

    def forward(self, input_ids, attention_mask, **_) -> torch.Tensor:
        states = self.backbone(input_ids=input_ids,
                               attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(pooled).squeeze(-1)


MODELS = {"finetune": SequenceRegressor, "lora": LoraPooledRegressor}


def _new_model(method: str, source: str) -> nn.Module:
    # Quietly: each learning rate reloads the model, and transformers reports the new
    # regression head's missing weights and a progress bar every time.
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return MODELS[method](source)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _tokenizer(source: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:  # decoder LMs: pad with EOS; the mask hides it
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _encode(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH,
                          return_tensors="pt"))


def _predict(model: nn.Module, tokenizer, texts: list[str]) -> np.ndarray:
    """Standardised predictions, in the order of ``texts`` (batches of similar length)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty(len(texts))
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), PREDICT_BATCH):
            rows = order[start:start + PREDICT_BATCH]
            batch = _encode(tokenizer, [texts[i] for i in rows])
            out[rows] = model(**batch).double().numpy()
    return out


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _train_one_lr(model, tokenizer, texts, y, val_texts, val_y, lr, epochs, seed, log):
    """Train; return (best hold-out MSE, its epoch, the trainable weights at that epoch)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    steps = epochs * math.ceil(len(texts) / BATCH_SIZE)
    warmup = max(1, int(WARMUP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup))))
    rng = np.random.RandomState(seed)
    target = torch.as_tensor(y, dtype=torch.float32)
    best = (math.inf, 0, None)
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        for rows in np.array_split(rng.permutation(len(texts)),
                                   math.ceil(len(texts) / BATCH_SIZE)):
            batch = _encode(tokenizer, [texts[i] for i in rows])
            loss = nn.functional.mse_loss(model(**batch), target[rows])
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        val_mse = float(np.mean((_predict(model, tokenizer, val_texts) - val_y) ** 2))
        log(f"      lr {lr:g} epoch {epoch}: hold-out MSE {val_mse:.4f} (standardised), "
            f"{time.perf_counter() - start:.0f} s")
        if val_mse < best[0]:
            best = (val_mse, epoch, _trainable_state(model))
    return best


def fit_predict(method: str, backbone: str, recipe: dict[str, Any], texts: list[str],
                y: np.ndarray, test_texts: list[str], seed: int,
                log=print) -> tuple[np.ndarray, float, float, dict]:
    """Tune on a hold-out of (texts, y), predict test_texts: (pred, fit s, predict s, params)."""
    source = resolve_backbone(backbone)
    tokenizer = _tokenizer(source)
    start = time.perf_counter()
    hold_out = RelishTextRegressor().validation_fraction  # the share RELISH holds out
    fit_rows, val_rows = train_test_split(np.arange(len(texts)), test_size=hold_out,
                                          random_state=seed)
    mean, scale = float(y[fit_rows].mean()), float(y[fit_rows].std()) or 1.0
    z = (y - mean) / scale
    fit_texts, val_texts = [texts[i] for i in fit_rows], [texts[i] for i in val_rows]
    chosen = (math.inf, None, 0, None)  # (MSE, lr, epoch, weights)
    for lr in recipe["lrs"]:
        torch.manual_seed(seed)  # every lr starts from the same head and adapters
        model = _new_model(method, source)
        mse, epoch, weights = _train_one_lr(model, tokenizer, fit_texts, z[fit_rows],
                                            val_texts, z[val_rows], lr, recipe["epochs"],
                                            seed, log)
        if mse < chosen[0]:
            chosen = (mse, lr, epoch, weights)
    torch.manual_seed(seed)
    model = _new_model(method, source)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loaded = model.load_state_dict(chosen[3], strict=False)  # frozen weights: as loaded
    assert not loaded.unexpected_keys, loaded.unexpected_keys
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pred = _predict(model, tokenizer, test_texts) * scale + mean
    return pred, fit_seconds, time.perf_counter() - start, {
        "lr": chosen[1], "best_epoch": chosen[2], "epochs": recipe["epochs"],
        "lrs": recipe["lrs"], "hold_out_mse": chosen[0], "trainable_params": int(trainable),
        "max_length": MAX_LENGTH, "batch_size": BATCH_SIZE,
    }
