"""A small MindEye-style residual MLP from betas to features (Scotti et al. 2023, 2024).

Architecture: Linear(v -> h) + LayerNorm + GELU + Dropout, ``n_blocks`` residual blocks of the same form,
Linear(h -> d). Loss: MSE on z-scored targets + ``contrastive_weight`` x symmetric InfoNCE (CLIP-style, on
cosine similarities of predictions and targets within a batch), which pushes each prediction toward its own
target and away from the others (what retrieval measures). Seeded; small enough to train on a CPU.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..utils.torch_runtime import resolve_device, torch_threads

LOG = logging.getLogger("m2i.decoding")


class ResidualMLP(nn.Module):
    def __init__(self, n_in: int, n_out: int, hidden: int = 512, n_blocks: int = 2, dropout: float = 0.3):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(n_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout))
            for _ in range(n_blocks))
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def info_nce(pred: torch.Tensor, target: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarities (batch rows are each other's negatives)."""
    p = nn.functional.normalize(pred, dim=1)
    t = nn.functional.normalize(target, dim=1)
    logits = p @ t.T / temperature
    labels = torch.arange(len(p), device=p.device)
    return 0.5 * (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels))


@dataclass
class MLPConfig:
    hidden: int = 512
    n_blocks: int = 2
    dropout: float = 0.3
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    contrastive_weight: float = 0.1
    temperature: float = 0.05


class MLPRegressor:
    """Fit/predict wrapper: inputs are z-scored betas, targets are z-scored internally.

    Parameters
    ----------
    config : MLPConfig
    seed : int
    device : ``auto`` | ``cpu`` | ``cuda``
    n_threads : int, optional
    """

    def __init__(self, config: MLPConfig | None = None, seed: int = 0, device="auto", n_threads=None):
        self.config = config or MLPConfig()
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.n_threads = n_threads
        self.model: ResidualMLP | None = None
        self.y_mean = self.y_scale = None

    def fit(self, X: np.ndarray, Y: np.ndarray, epochs: int | None = None) -> "MLPRegressor":
        """Train from scratch on X (n, v), Y (n, d)."""
        X = np.asarray(X, np.float32)
        Y = np.asarray(Y, np.float32)
        self.y_mean = Y.mean(0)
        self.y_scale = Y.std(0) + 1e-6
        with torch_threads(self.n_threads):
            torch.manual_seed(self.seed)
            c = self.config
            self.model = ResidualMLP(X.shape[1], Y.shape[1], c.hidden, c.n_blocks, c.dropout).to(self.device)
            self._train(X, Y, epochs or c.epochs, c.lr)
        return self

    def continue_training(self, X: np.ndarray, Y: np.ndarray, epochs: int = 20, lr: float | None = None):
        """Fine-tune the fitted network on new pairs (e.g. imagery trials), keeping target scaling."""
        with torch_threads(self.n_threads):
            self._train(np.asarray(X, np.float32), np.asarray(Y, np.float32), epochs,
                        lr or self.config.lr * 0.3)
        return self

    def _train(self, X, Y, epochs, lr):
        c = self.config
        generator = torch.Generator().manual_seed(self.seed)
        Xt = torch.from_numpy(X).to(self.device)
        Yt = torch.from_numpy((Y - self.y_mean) / self.y_scale).to(self.device)
        optimiser = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=c.weight_decay)
        steps = max(1, epochs * int(np.ceil(len(X) / c.batch_size)))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
        self.model.train()
        for _ in range(epochs):
            order = torch.randperm(len(X), generator=generator).to(self.device)
            for start in range(0, len(X), c.batch_size):
                idx = order[start:start + c.batch_size]
                if len(idx) < 2:
                    continue
                pred = self.model(Xt[idx])
                loss = nn.functional.mse_loss(pred, Yt[idx])
                if c.contrastive_weight > 0:
                    loss = loss + c.contrastive_weight * info_nce(pred, Yt[idx], c.temperature)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
        self.model.eval()

    def predict(self, X: np.ndarray) -> np.ndarray:
        with torch_threads(self.n_threads), torch.no_grad():
            out = self.model(torch.from_numpy(np.asarray(X, np.float32)).to(self.device)).cpu().numpy()
        return out * self.y_scale + self.y_mean

    def copy(self) -> "MLPRegressor":
        return copy.deepcopy(self)

    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"mlp.{k}": v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}
        arrays["mlp_y_mean"] = self.y_mean
        arrays["mlp_y_scale"] = self.y_scale
        return arrays

    def load_state_arrays(self, arrays: dict, n_in: int, n_out: int) -> "MLPRegressor":
        c = self.config
        self.model = ResidualMLP(n_in, n_out, c.hidden, c.n_blocks, c.dropout).to(self.device)
        state = {k[4:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("mlp.")}
        self.model.load_state_dict(state)
        self.model.eval()
        self.y_mean = np.asarray(arrays["mlp_y_mean"])
        self.y_scale = np.asarray(arrays["mlp_y_scale"])
        return self
