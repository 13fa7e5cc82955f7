"""Causal STFT-mask LSTM dereverberation model, written so that training and streaming share one graph.

The model is a *step function*: it maps ``n`` hops of audio plus its state to ``n`` hops of output
plus the new state. Training calls the same step on a whole segment with zero state, so the
exported ONNX graph (``export/``) is exactly what was trained, hop for hop.

Signal path (16 kHz, window 512 = 32 ms, hop 256 = 16 ms, 50 % overlap):

    audio [B, n*hop] --frame--> [B, n, win] --sqrt-Hann + DFT (matmul)--> re, im [B, n, F]
    log power --> LSTM x L --> Linear --> sigmoid mask [B, n, F] (0..1, real)
    mask * (re, im) --inverse DFT + sqrt-Hann (matmul)--> overlap-add --> audio_out [B, n*hop]

The DFT is a matrix product rather than an FFT op so the ONNX graph uses only MatMul (portable to any
ONNX runtime, and cheap enough at 512 points). The bounded real mask keeps the mixture's phase and can
only attenuate a time-frequency bin: late reverberation is removed, nothing is invented.

State (all explicit, batch axis = audio channel):
    analysis [B, hop]      the previous hop of input (first half of the next analysis frame)
    ola      [B, hop]      the second half of the last synthesis frame (overlap-add tail)
    lstm_h   [L, B, H]     LSTM hidden state
    lstm_c   [L, B, H]     LSTM cell state

Latency: output hop k completes input samples [(k-1)*hop, k*hop), so the step delays audio by
``win - hop`` samples; the streaming engine adds ``hop - 1`` samples of block buffering on top.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

STATE_NAMES: tuple[str, ...] = ("analysis", "ola", "lstm_h", "lstm_c")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (see module docstring for the shapes they give)."""

    sample_rate: int = 16000
    win: int = 512
    hop: int = 256
    hidden: int = 256
    layers: int = 2
    # Floor of the log-power features, relative to full scale: bins below it are treated as silence.
    log_floor: float = 1e-10

    @property
    def bins(self) -> int:
        return self.win // 2 + 1

    @property
    def step_latency(self) -> int:
        """Delay of the step function itself, in samples."""
        return self.win - self.hop

    def to_dict(self) -> dict:
        return asdict(self)


def dft_matrices(win: int) -> tuple[Tensor, Tensor]:
    """Real-DFT analysis and synthesis matrices with the sqrt-Hann windows folded in.

    Returns:
        forward: [win, 2F] so that ``frames @ forward = [re | im]`` (F = win // 2 + 1).
        inverse: [2F, win] so that ``[re | im] @ inverse`` is the windowed inverse real DFT; with
            50 % overlap-add the two sqrt-Hann windows multiply to a periodic Hann, which sums to 1.
    """
    n = torch.arange(win, dtype=torch.float64)
    window = torch.sqrt(0.5 - 0.5 * torch.cos(2 * math.pi * n / win))
    bins = win // 2 + 1
    k = torch.arange(bins, dtype=torch.float64)
    phase = 2 * math.pi * n[:, None] * k[None, :] / win  # [win, F]
    forward = torch.cat([torch.cos(phase), -torch.sin(phase)], dim=1) * window[:, None]
    # Onesided inverse: DC and Nyquist appear once in the full spectrum, the other bins twice.
    weight = torch.full((bins,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    weight[-1] = 1.0
    inv_re = (weight[:, None] * torch.cos(phase.T)) / win
    inv_im = (-weight[:, None] * torch.sin(phase.T)) / win
    inverse = torch.cat([inv_re, inv_im], dim=0) * window[None, :]
    return forward.float(), inverse.float()


class MaskLSTM(nn.Module):
    """STFT-magnitude masking LSTM; ``forward`` is the streaming step (see module docstring)."""

    def __init__(self, cfg: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        if cfg.win != 2 * cfg.hop:
            raise ValueError("the framing assumes 50 % overlap (win == 2 * hop)")
        self.cfg = cfg
        forward, inverse = dft_matrices(cfg.win)
        self.register_buffer("dft_forward", forward, persistent=False)
        self.register_buffer("dft_inverse", inverse, persistent=False)
        f = cfg.bins
        # Per-bin affine on the log power, so the LSTM sees roughly unit-scale inputs at speech levels.
        self.feat_scale = nn.Parameter(torch.full((f,), 0.2))
        self.feat_bias = nn.Parameter(torch.full((f,), 2.0))
        self.lstm = nn.LSTM(f, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.mask = nn.Linear(cfg.hidden, f)
        # Start close to pass-through so early training does not destroy the signal.
        nn.init.constant_(self.mask.bias, 2.0)

    def initial_state(self, batch: int) -> dict[str, Tensor]:
        """Zero state for ``batch`` channels, keyed by the contract's state names."""
        cfg = self.cfg
        return {
            "analysis": torch.zeros(batch, cfg.hop),
            "ola": torch.zeros(batch, cfg.hop),
            "lstm_h": torch.zeros(cfg.layers, batch, cfg.hidden),
            "lstm_c": torch.zeros(cfg.layers, batch, cfg.hidden),
        }

    def forward(
        self, audio: Tensor, analysis: Tensor, ola: Tensor, lstm_h: Tensor, lstm_c: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One streaming step.

        Args:
            audio: [B, n * hop] float32 at ``cfg.sample_rate``, n >= 1.
            analysis, ola: [B, hop]; lstm_h, lstm_c: [layers, B, hidden].
        Returns:
            (audio_out [B, n * hop] delayed by ``win - hop`` samples, analysis_out, ola_out,
            lstm_h_out, lstm_c_out).
        """
        hop = self.cfg.hop
        batch = audio.shape[0]
        buf = torch.cat([analysis, audio], dim=1).reshape(batch, -1, hop)  # [B, n+1, hop]
        frames = torch.cat([buf[:, :-1], buf[:, 1:]], dim=2)  # [B, n, win]
        spec = frames @ self.dft_forward  # [B, n, 2F]
        f = self.cfg.bins
        re, im = spec[..., :f], spec[..., f:]
        feat = torch.log(re * re + im * im + self.cfg.log_floor) * self.feat_scale + self.feat_bias
        hidden, (h_out, c_out) = self.lstm(feat, (lstm_h, lstm_c))
        mask = torch.sigmoid(self.mask(hidden))
        out_frames = torch.cat([re * mask, im * mask], dim=2) @ self.dft_inverse  # [B, n, win]
        first, second = out_frames[..., :hop], out_frames[..., hop:]
        prev_second = torch.cat([ola.unsqueeze(1), second[:, :-1]], dim=1)
        audio_out = (first + prev_second).reshape(batch, -1)
        return audio_out, audio[:, -hop:], second[:, -1], h_out, c_out

    def enhance(self, audio: Tensor) -> Tensor:
        """Whole-segment processing from zero state, for training.

        Args:
            audio: [B, T] with T a multiple of hop.
        Returns:
            [B, T] output, delayed by ``cfg.step_latency`` samples (as the stream is).
        """
        state = self.initial_state(audio.shape[0])
        return self(audio, *(state[k].to(audio) for k in STATE_NAMES))[0]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_hop(cfg: ModelConfig) -> int:
    """Multiply-adds per hop per channel (DFTs, LSTM, mask layer), for the model card."""
    f, h = cfg.bins, cfg.hidden
    dft = 2 * cfg.win * 2 * f
    lstm = 4 * h * (f + h) + (cfg.layers - 1) * 4 * h * (2 * h)
    return dft + lstm + h * f
