"""Causal STFT complex-mask LSTM dereverberation model, written so that training and streaming share one graph.

The model is a *step function*: it maps ``n`` hops of audio plus its state to ``n`` hops of output
plus the new state. Training calls the same step on a whole segment with zero state, so the
exported ONNX graph (``export/``) is exactly what was trained, hop for hop.

Signal path (16 kHz, window 512 = 32 ms, hop 256 = 16 ms, 50 % overlap):

    audio [B, n*hop] --frame--> [B, n, win] --sqrt-Hann + DFT (matmul)--> X = re + j im  [B, n, F]
    features [log |X|^2, compressed re, compressed im] --Linear--> LSTM x L --> Linear --> mask [B, n, F]
    mask * X --inverse DFT + sqrt-Hann (matmul)--> overlap-add --> audio_out [B, n*hop]

The mask is complex, with its magnitude bounded below 1 (``z tanh|z| / |z|``): it can rotate phase as
well as attenuate, but never amplify a bin. Why complex: on held-out rooms with RT60 0.4-0.8 s an
*oracle* real mask in [0, 1] lifts SI-SDR against the early-50 ms target only from 6.9 to 10.9 dB,
while an oracle complex mask with |m| <= 1 reaches 19.4 dB (measured with this exact STFT). The
compressed real/imaginary features (|X|^0.3 with X's phase) give the network the phase information a
complex mask needs.

With ``music_gate`` a small head on the LSTM output gives, per frame, the probability that the input is
music, and the mask is relaxed towards 1 (pass-through) as it rises (``gate_shares``). ``forward``
returns the gate's per-frame pass-through share and logit after the states.

The DFT is a matrix product rather than an FFT op so the ONNX graph uses only MatMul (portable to any
ONNX runtime, and cheap enough at 512 points).

State (all explicit, batch axis = audio channel):
    analysis [B, hop]      the previous hop of input (first half of the next analysis frame)
    ola      [B, hop]      the second half of the last synthesis frame (overlap-add tail)
    lstm_h   [L, B, H]     LSTM hidden state
    lstm_c   [L, B, H]     LSTM cell state
    spec_past [B, M, 2F]   past frames' spectra, for the linear-prediction head (``lp_taps``)
    music_hold [B, k]      the music gate's hold (``music_hold_seconds``, ``music_clear_frames``)
    pred_hist [B, M, 2Fp]  with the late-reverb predictor (``rls_taps``): the last M input frames of its
                           Fp bins; rls_g [B, 2, Fp, K], rls_p [B, 2, Fp, K, K], rls_level and
                           rls_weight [B, Fp]: its filter, inverse correlation and running level
                           (training.predictor_torch). The model then runs one hop at a time.

Latency: output hop k completes input samples [(k-1)*hop, k*hop), so the step delays audio by
``win - hop`` samples; the streaming engine adds ``hop - 1`` samples of block buffering on top.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from training import predictor_torch
from training.predictor import PredictorConfig
from training.predictor import macs_per_hop as predictor_macs

STATE_NAMES: tuple[str, ...] = ("analysis", "ola", "lstm_h", "lstm_c")
# Recurrent states: [layers, channels, ...], channel axis 1 (the others put channels first).
RECURRENT: tuple[str, ...] = ("lstm_h", "lstm_c")
# The late-reverb predictor's states (ModelConfig.rls_taps), channel axis 0: the past input frames it
# predicts from, its filter, inverse correlation, running level and that level's weight.
RLS_STATES: tuple[str, ...] = ("pred_hist", "rls_g", "rls_p", "rls_level", "rls_weight")
# The music gate's head (one linear layer, or two with ModelConfig.music_gate_hidden): trained last, by
# training.gate, on a frozen network.
GATE_HEAD: tuple[str, ...] = ("music_gate.", "music_gate_in.")
# Layers a model may add to a checkpoint it is initialised from (``init_weights``): each one's output
# layer starts at zero, so the grown model starts exactly at the checkpoint's quality.
GROWN_LAYERS: tuple[str, ...] = ("lp.", "proj_residual.") + GATE_HEAD
# Music gate (ModelConfig.music_gate): below GATE_OPEN music probability the mask is the model's own,
# above GATE_SHUT it is exactly 1 (pass-through), linear in between.
GATE_OPEN, GATE_SHUT = 0.1, 0.9
# Settings of network variants this model does not have, with the value that switches each off: a
# checkpoint that carries one at that value (the shipped one does) loads, any other value is refused.
# The sizes in RETIRED_SIZES only meant something with their variant on, so they are dropped.
RETIRED_SWITCHES: dict[str, object] = {"mask": "complex", "mask_exponent": 1.0, "ema_seconds": (),
                                       "band_width": 0, "time_basis": 0}
RETIRED_SIZES: tuple[str, ...] = ("band_hidden", "band_layers", "band_context", "band_embed", "time_hidden")


def without_gate_head(weights: dict) -> dict:
    """A checkpoint's weights without the music gate's head (``GATE_HEAD``): what a run that trains a
    new head (``training.gate``) or moves the LSTM output the head reads (``optim.init_from``) starts from."""
    return {k: v for k, v in weights.items() if not k.startswith(GATE_HEAD)}


def _float32() -> contextlib.AbstractContextManager:
    """A context in which a caller's CPU autocast is off (a no-op when none is on, as in export)."""
    return torch.autocast("cpu", enabled=False) if torch.is_autocast_enabled("cpu") else contextlib.nullcontext()


def channel_axis(state: str) -> int:
    """The channel (batch) axis of a state tensor: 1 for the recurrent states, 0 for the others."""
    return 1 if state in RECURRENT else 0


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (see module docstring for the shapes they give)."""

    sample_rate: int = 16000
    win: int = 512
    hop: int = 256
    hidden: int = 256
    layers: int = 2
    # Width of the linear layer in front of the LSTM (0: the features go straight into the LSTM).
    input_proj: int = 256
    # Floor of the log-power features, relative to full scale: bins below it are treated as silence.
    log_floor: float = 1e-10
    # Linear prediction of late reverberation (0: none). The LSTM also gives, per bin, ``lp_taps``
    # complex coefficients g_k, and the mask is applied to X(t) - sum_k g_k X(t - lp_delay - k) (frames,
    # so lp_delay = 3 keeps the first 48 ms, the early part, out of the prediction); state "spec_past"
    # holds the frames it needs. Why: late reverberation is, bin by bin, a decaying echo of that bin's
    # own past, which a prediction from past frames can remove and a mask on the current frame cannot
    # (docs/research.md, "A sub-band LSTM, trained in full; what limits the learned models"). The coefficients' layer is zero at init, so a
    # model grown from a mask-only checkpoint starts exactly where that checkpoint was.
    lp_taps: int = 0
    lp_delay: int = 3
    # Music gate: a head on the LSTM output gives, per frame, the probability that the input is
    # music, and the mask is relaxed towards 1 (pass-through) as that probability rises (GATE_OPEN,
    # GATE_SHUT). Why: a dereverberation mask learned on speech reads a sustained note as a reverberant
    # tail and cuts it; on near-clean music that cost up to 18 dB SI-SDR. The head is trained apart,
    # as a classifier on the frozen model (training.gate); at init its probability is ~0, so the grown
    # model is exactly the checkpoint it starts from. See MaskLSTM.forward.
    music_gate: bool = False
    # Hidden units of the gate's head (0: the head is one linear layer). With H > 0 the head is
    # Linear(hidden, H), tanh, Linear(H, 1) (layers "music_gate_in" and "music_gate"). Why: trained to
    # call a noise floor before any sound "neither kind", a linear head also let reverberant tails that
    # fade into the same floor through (docs/research.md, "A linear gate head that knows a noise floor"); telling the two
    # apart needs what the LSTM remembers of recent sound, which a linear read-out mixes with the level.
    music_gate_hidden: int = 0
    # With the music gate: once a frame is passed through as music, the pass-through share is held and
    # released with this time constant (s; state "music_hold"; 0: no hold). Why: a pause or a decaying
    # note between notes looks like neither music nor speech, and processing near-clean music for even
    # a few frames costs many dB; a voice activity detector's hang-over, for the same reason.
    music_hold_seconds: float = 1.0
    # With the hold: only this many sure-speech frames in a row clear it (state "music_hold" also keeps
    # the last music_clear_frames - 1 raw shares). Why: from the rest state the head needs a few frames
    # to tell music from speech, and a lone frame it calls speech inside a note must not end the hold.
    music_clear_frames: int = 1
    # With the hold: the rest state (every stream's start, and reset) has the hold open, so a stream
    # passes its input through until the head is sure of speech. Why: near-clean music processed for its
    # first 5 to 10 frames lost up to 13 dB SI-SDR; speech waits music_clear_frames - 1 hops (docs/model.md).
    # Digital silence leaves the hold as it is (gate_shares), so the open rest state is where silence leads.
    music_start_open: bool = False
    # With the hold: frames (win samples) whose mean square is at most this (dB relative to 1.0, a
    # full-scale square wave) leave the hold as it is: no clearing, no release. Why: the head calls
    # digital silence speech, which would shut an open hold before the first sound and make the rest
    # state something silence does not lead to. -100 dB is about 16-bit quantisation noise (LSB^2 / 12); a
    # higher value (-70: a quiet noise floor) changed nothing for music on validation and passed more
    # speech through (docs/model.md, "Music").
    music_quiet_dbfs: float = -100.0
    # Per-bin RLS predictor of the late reverberation inside the step (0 taps: none;
    # training.predictor_torch). Per frame t, in every bin up to rls_f_max Hz: the prediction
    # g^H (X(t - rls_delay), ..., X(t - rls_delay - rls_taps + 1)) with the current filter g is
    # subtracted from X(t); the network's features are those of the residual R(t) and its mask applies
    # to R(t), giving the early estimate E(t); then g and its inverse correlation P are updated (one RLS
    # step, training.predictor's safeguards) towards the late target X(t) - E(t). Why: late reverberation
    # is a linear function of each bin's own past, which an adaptive predictor driven by the network's
    # late estimate removes and a single-frame mask cannot (docs/research.md). The predictor has no
    # weights: it can be added to any checkpoint (python -m export --set model.rls_taps=10). The step
    # is sequential in frames (frame t's filter needs E(t - 1)), so the model runs hop by hop; the
    # exported graph is an ONNX Loop over hops (export.onnx_export). Settings: see
    # training.predictor.PredictorConfig (rls_lam its lam, and so on); predictor_config() is the one
    # conversion, every field set from here. rls_delta 30 and rls_settle 32: with them the untrained
    # single pass measured best (delta 30 above 10 in every RT60 bin, docs/research.md), and without
    # settling a bin's start is scaled to the quiet onset of its first sound and diverges.
    rls_taps: int = 0
    rls_delay: int = 3
    rls_lam: float = 0.998
    rls_delta: float = 30.0
    rls_floor: float = 1e-10
    rls_clip: float = 10.0
    rls_settle: int = 32
    rls_f_max: float = 8000.0
    # What the network reads with the predictor: "residual" (the features of R(t) in place of X(t)'s) or
    # "both" (X(t)'s through the input projection as without the predictor, plus R(t)'s through a layer
    # "proj_residual", zero at init: the grown network computes exactly the checkpoint's mask, which
    # then applies to R(t)). Why both: the untrained network is the checkpoint's and training decides
    # how much of the residual it uses; "residual" is the simpler graph (no extra layer).
    rls_features: str = "residual"
    # The predictor's late target: "residual" X - E with E = mask * R (the early estimate), or "input"
    # (1 - mask) X, the share of the input the mask would remove. Why "input": X - E holds the
    # prediction itself (X - E = prediction + (1 - mask) R), so a mask that never passes everything
    # asks for more than was predicted at every hop and the filter grows into the early speech; in
    # (1 - mask) X the prediction has weight 1 - mask, as in a cascade's first pass (docs/research.md).
    rls_target: str = "residual"

    @property
    def bins(self) -> int:
        return self.win // 2 + 1

    @property
    def step_latency(self) -> int:
        """Delay of the step function itself, in samples."""
        return self.win - self.hop

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def state_names(self) -> tuple[str, ...]:
        return (STATE_NAMES + (("spec_past",) if self.lp_taps else ())
                + (("music_hold",) if self.music_gate and self.music_hold_seconds > 0 else ())
                + (RLS_STATES if self.rls_taps else ()))

    @property
    def rls_bins(self) -> int:
        """Bins the predictor covers: 0 .. rls_bins - 1, those at or below ``rls_f_max`` Hz."""
        return sum(1 for k in range(self.bins) if k * self.sample_rate / self.win <= self.rls_f_max) if self.rls_taps else 0

    @property
    def rls_frames(self) -> int:
        """Past frames the predictor's regressor reaches back to (state "pred_hist")."""
        return self.rls_delay + self.rls_taps - 1 if self.rls_taps else 0

    def predictor_config(self) -> PredictorConfig:
        """The predictor's settings in training.predictor's terms: every field of PredictorConfig set
        from the rls_* options (none left at PredictorConfig's defaults), so the numpy reference and
        the torch / ONNX step run with the same values."""
        return PredictorConfig(taps=self.rls_taps, delay=self.rls_delay, lam=self.rls_lam, delta=self.rls_delta,
                               floor=self.rls_floor, clip=self.rls_clip, settle=self.rls_settle)

    @property
    def lp_frames(self) -> int:
        """Past frames the prediction needs (state "spec_past")."""
        return self.lp_delay + self.lp_taps - 1 if self.lp_taps else 0

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """The config a checkpoint or card records (``to_dict``; TOML and JSON give lists for tuples).
        Settings of variants this network does not have (``RETIRED_SWITCHES``) are accepted only at the
        value that switches them off."""
        out = dict(values)
        for key, off in RETIRED_SWITCHES.items():
            if key in out:
                value = out.pop(key)
                if (list(value) if isinstance(value, (list, tuple)) else value) != (list(off) if isinstance(off, tuple) else off):
                    raise ValueError(f"model.{key} = {value!r}: this network has no such variant (only {off!r})")
        for key in RETIRED_SIZES:
            out.pop(key, None)
        return cls(**out)


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


class StepOutput(NamedTuple):
    """What one step gives, by name (``MaskLSTM.step``)."""

    audio: Tensor                  # [B, n * hop], delayed by ``win - hop`` samples
    state: dict[str, Tensor]       # each state's new value, by name
    pass_share: Tensor | None      # [B, n] with the music gate: how much of each frame passes through
    music_logit: Tensor | None     # [B, n] with the music gate: the head's music logit per frame


class MaskLSTM(nn.Module):
    """STFT complex-mask LSTM; ``forward`` is the streaming step (see module docstring)."""

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
        n_feat = 3 * f
        self.proj = nn.Linear(n_feat, cfg.input_proj) if cfg.input_proj else None
        self.lstm = nn.LSTM(cfg.input_proj or n_feat, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.mask = nn.Linear(cfg.hidden, 2 * f)
        if cfg.lp_taps:
            if cfg.lp_delay < 1:
                raise ValueError("lp_delay must be >= 1 frame (the current frame is not predicted)")
            # Zero at init: no prediction until training finds one.
            self.lp = nn.Linear(cfg.hidden, f * 2 * cfg.lp_taps)
            nn.init.zeros_(self.lp.weight)
            nn.init.zeros_(self.lp.bias)
        if cfg.rls_taps:
            if cfg.rls_delay < 1:
                raise ValueError("rls_delay must be >= 1 frame (the current frame is not predicted)")
            if cfg.rls_settle < 0:
                raise ValueError("rls_settle must be >= 0 hops")
            if cfg.lp_taps:
                raise ValueError("rls_taps and lp_taps are two predictors of the same late part: choose one")
            if cfg.rls_target not in ("residual", "input"):
                raise ValueError(f"rls_target = {cfg.rls_target!r}: 'residual' or 'input'")
            if cfg.rls_features not in ("residual", "both"):
                raise ValueError(f"rls_features = {cfg.rls_features!r}: 'residual' or 'both'")
            if cfg.rls_features == "both":
                if not cfg.input_proj:
                    raise ValueError("rls_features = 'both' needs the input projection (input_proj > 0)")
                self.proj_residual = nn.Linear(n_feat, cfg.input_proj)  # zero: reads nothing of R at init
                nn.init.zeros_(self.proj_residual.weight)
                nn.init.zeros_(self.proj_residual.bias)
        if cfg.music_gate:
            if cfg.music_gate_hidden:
                self.music_gate_in = nn.Linear(cfg.hidden, cfg.music_gate_hidden)
            self.music_gate = nn.Linear(cfg.music_gate_hidden or cfg.hidden, 1)
            nn.init.zeros_(self.music_gate.weight)
            nn.init.constant_(self.music_gate.bias, -20.0)  # sigmoid(-20) ~ 2e-9: the gate is open
        # Start close to pass-through so early training does not destroy the signal: real part
        # tanh(2) = 0.96, imaginary part 0.
        nn.init.zeros_(self.mask.weight)
        with torch.no_grad():
            self.mask.bias.zero_()
            self.mask.bias[:f] = 2.0

    @property
    def state_names(self) -> tuple[str, ...]:
        """The state tensors, in the order ``forward`` takes and returns them."""
        return self.cfg.state_names

    def initial_state(self, batch: int) -> dict[str, Tensor]:
        """Zero state for ``batch`` channels, keyed by the contract's state names."""
        cfg = self.cfg
        state = {
            "analysis": torch.zeros(batch, cfg.hop),
            "ola": torch.zeros(batch, cfg.hop),
            "lstm_h": torch.zeros(cfg.layers, batch, cfg.hidden),
            "lstm_c": torch.zeros(cfg.layers, batch, cfg.hidden),
        }
        if cfg.lp_taps:
            state["spec_past"] = torch.zeros(batch, cfg.lp_frames, 2 * cfg.bins)
        if "music_hold" in cfg.state_names:
            state["music_hold"] = torch.zeros(batch, cfg.music_clear_frames)
        if cfg.rls_taps:
            fp = cfg.rls_bins
            state["pred_hist"] = torch.zeros(batch, cfg.rls_frames, 2 * fp)
            rls = predictor_torch.init_state(batch, fp, cfg.rls_taps)
            state.update({"rls_g": rls["g"], "rls_p": rls["P"], "rls_level": rls["level"], "rls_weight": rls["weight"]})
        return state

    @torch.no_grad()
    def rest_state(self, batch: int, seconds: float) -> dict[str, Tensor]:
        """State after ``seconds`` of digital silence from zero state, for ``batch`` channels: the state
        every stream starts from at run time (stream.model.StepModel.initial_state)."""
        state = self.initial_state(1)
        hops = int(round(seconds * self.cfg.sample_rate / self.cfg.hop))
        if hops:
            state = self.step(torch.zeros(1, hops * self.cfg.hop), state).state
        for name, value in rest_overrides(self.cfg).items():
            state[name] = torch.full_like(state[name], value)
        return {k: v.repeat_interleave(batch, dim=channel_axis(k)) for k, v in state.items()}

    def step(self, audio: Tensor, state: dict[str, Tensor]) -> StepOutput:
        """``forward`` with the states by name and its outputs named (see ``StepOutput``)."""
        out = self(audio, *(state[k] for k in self.state_names))
        k = len(self.state_names)
        gate = out[1 + k:] if self.cfg.music_gate else (None, None)
        return StepOutput(out[0], dict(zip(self.state_names, out[1:1 + k])), *gate)

    def forward(self, audio: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        """One streaming step.

        Args:
            audio: [B, n * hop] float32 at ``cfg.sample_rate``, n >= 1.
            states, in ``state_names`` order: analysis, ola [B, hop]; lstm_h, lstm_c [layers, B, hidden];
            with ``lp_taps``, spec_past [B, lp_frames, 2F] (past frames' spectra, re then im);
            with ``music_gate`` and ``music_hold_seconds`` > 0, music_hold [B, k] (the held pass-through
            share, then the last k - 1 raw shares; k = ``music_clear_frames``).
        Returns:
            (audio_out [B, n * hop] delayed by ``win - hop`` samples, then each state's new value in
            the same order, then with ``music_gate`` the pass-through share [B, n] (0..1) and the
            head's music logit [B, n] per frame).
        """
        if self.cfg.rls_taps and audio.shape[1] > self.cfg.hop:
            return self._hop_by_hop(audio, states)
        return self._forward(audio, states)

    def _forward(self, audio: Tensor, states: tuple[Tensor, ...], given: Tensor | None = None,
                 fast: bool = False) -> tuple[Tensor, ...]:
        """``forward`` on [B, n * hop]; with the predictor, either one hop (``given`` None: the
        prediction from the state's filter, which the hop then updates) or any n hops with the
        predictions ``given`` [B, n, 2, Fp] (``with_predictions``: the predictor's states are
        returned unchanged). ``fast``: the predictor's update in complex arithmetic (not traceable)."""
        # Under a caller's bfloat16 autocast (training, optim.precision) only the layers between these two
        # float32 blocks (input projection, LSTM, mask and prediction layers) run in bf16: with its 8-bit
        # mantissa the DFT, the mask's product and the overlap-add would each add error near -50 dB, about
        # the 30-50 dB SNR the loss asks of near-clean examples.
        with _float32():
            analysis, ola, lstm_h, lstm_c = states[:4]
            named = dict(zip(self.state_names[4:], states[4:]))  # the optional states, by name
            hop = self.cfg.hop
            batch = audio.shape[0]
            buf = torch.cat([analysis, audio], dim=1).reshape(batch, -1, hop)  # [B, n+1, hop]
            frames = torch.cat([buf[:, :-1], buf[:, 1:]], dim=2)  # [B, n, win]
            spec = frames @ self.dft_forward  # [B, n, 2F]
            f = self.cfg.bins
            re, im = spec[..., :f], spec[..., f:]
            regressor = None
            if self.cfg.rls_taps:
                # The network sees, and its mask applies to, the residual of the late-reverb prediction.
                x_re, x_im = re, im
                if given is None:
                    regressor = self._regressor(named["pred_hist"])
                    given = predictor_torch.predict(named["rls_g"], regressor).unsqueeze(1)
                re, im = self._residual(re, im, given)
            power = re * re + im * im + self.cfg.log_floor
            feat = torch.log(power) * self.feat_scale + self.feat_bias
            # |X|^0.3 with X's phase: a level-compressed view of the phase for the complex mask.
            squash = power ** -0.35
            feat = torch.cat([feat, re * squash, im * squash], dim=2)
            if self.cfg.rls_taps and self.cfg.rls_features == "both":
                x_power = x_re * x_re + x_im * x_im + self.cfg.log_floor
                x_squash = x_power ** -0.35
                x_feat = torch.cat([torch.log(x_power) * self.feat_scale + self.feat_bias,
                                    x_re * x_squash, x_im * x_squash], dim=2)
        if self.cfg.rls_taps and self.cfg.rls_features == "both":
            feat = self.proj(x_feat) + self.proj_residual(feat)
        elif self.proj is not None:
            feat = self.proj(feat)
        hidden, (h_out, c_out) = self.lstm(feat, (lstm_h, lstm_c))
        z = self.mask(hidden)
        coef = self.lp(hidden).reshape(batch, hidden.shape[1], 2, self.cfg.lp_taps, f) if self.cfg.lp_taps else None
        with _float32():
            # The network's outputs come back as float32 for the DSP that follows.
            hidden, z, h_out, c_out = hidden.float(), z.float(), h_out.float(), c_out.float()
            extra: tuple[Tensor, ...] = ()
            if coef is not None:
                re, im, past = self._predict(spec, named["spec_past"], coef.float())
                extra = (past,)
            passed, gate = None, ()
            if self.cfg.music_gate:
                feat = torch.tanh(self.music_gate_in(hidden)) if self.cfg.music_gate_hidden else hidden
                logit = self.music_gate(feat)[..., 0]  # [B, n]
                # Digital silence is no evidence of either kind, yet the head reads it as speech. The hold
                # neither clears nor releases there, so silence leaves the rest state where it is.
                silent = frames.square().mean(-1) <= 10.0 ** (self.cfg.music_quiet_dbfs / 10.0)
                share, hold = gate_shares(logit, named.get("music_hold"), self.cfg, silent)  # [B, n], [B, k]
                if hold is not None:
                    extra = extra + (hold,)
                gate = (share, logit)
                passed = share.unsqueeze(-1)  # written as mask + passed * (1 - mask): exactly the mask where 0
            zr, zi = z[..., :f], z[..., f:]
            mag = torch.sqrt(zr * zr + zi * zi + 1e-12)
            gain = torch.tanh(mag) / mag  # |mask| = tanh|z| < 1, the phase of z kept
            mr, mi = zr * gain, zi * gain
            if self.cfg.rls_taps and regressor is None:  # predictions given: E (passing X where the gate does)
                out_re, out_im = mr * re - mi * im, mr * im + mi * re
                if passed is not None:
                    out_re, out_im = out_re + passed * (x_re - out_re), out_im + passed * (x_im - out_im)
                extra = extra + tuple(named[k] for k in RLS_STATES)
            elif self.cfg.rls_taps:
                out_re, out_im, rls_states = self._rls_output(x_re, x_im, re, im, mr, mi, passed, named, regressor, fast)
                extra = extra + rls_states
            elif passed is not None:
                mr, mi = mr + passed * (1.0 - mr), mi - passed * mi  # still |mask| <= 1: a blend of two such masks
            if not self.cfg.rls_taps:
                out_re, out_im = mr * re - mi * im, mr * im + mi * re
            out_frames = torch.cat([out_re, out_im], dim=2) @ self.dft_inverse  # [B, n, win]
            first, second = out_frames[..., :hop], out_frames[..., hop:]
            prev_second = torch.cat([ola.unsqueeze(1), second[:, :-1]], dim=1)
            audio_out = (first + prev_second).reshape(batch, -1)
        return (audio_out, audio[:, -hop:], second[:, -1], h_out, c_out) + extra + gate

    def _hop_by_hop(self, audio: Tensor, states: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """``forward`` one hop at a time: with the predictor, frame t's filter needs frame t - 1's early
        estimate. Same inputs and outputs as ``forward``."""
        hop, k = self.cfg.hop, len(self.state_names)
        outs, per_hop = [], []
        for i in range(audio.shape[1] // hop):
            out = self(audio[:, i * hop:(i + 1) * hop], *states)
            states = out[1:1 + k]
            outs.append(out[0])
            per_hop.append(out[1 + k:])
        joined = tuple(torch.cat(parts, dim=1) for parts in zip(*per_hop))
        return (torch.cat(outs, dim=1), *states) + joined

    def _regressor(self, hist: Tensor) -> Tensor:
        """The predictor's regressor of the current frame t: x [B, 2, Fp, K], frame t - D - k at tap k,
        from the past frames ``hist`` [B, M, 2Fp] (t - M .. t - 1)."""
        cfg = self.cfg
        fp = cfg.rls_bins
        # hist[:, 0:K] holds frames t - M .. t - D (M = D + K - 1): taps K - 1 .. 0.
        x = hist[:, :cfg.rls_taps].flip(1)  # [B, K, 2Fp], tap 0 first
        return torch.stack([x[..., :fp], x[..., fp:]], dim=1).transpose(-1, -2)

    def _residual(self, re: Tensor, im: Tensor, pred: Tensor) -> tuple[Tensor, Tensor]:
        """X minus the prediction ``pred`` [B, n, 2, Fp] in the predicted bins: re, im [B, n, F]."""
        fp = self.cfg.rls_bins
        zero = torch.zeros_like(re[..., fp:])
        return re - torch.cat([pred[:, :, 0], zero], dim=2), im - torch.cat([pred[:, :, 1], zero], dim=2)

    def train_step(self, audio: Tensor, state: dict[str, Tensor], bf16: bool = False) -> StepOutput:
        """The streaming step as training runs it on a segment ``audio`` [B, n * hop] from ``state``:
        ``step``, or with the predictor its predictions streamed first (float32, no gradient) and the
        network then run over the segment on them (``with_predictions``). ``bf16``: the network under
        CPU bfloat16 autocast (see ``forward``)."""
        if not self.cfg.rls_taps:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return self.step(audio, state)
        given, final = self.predictions(audio, state)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            res = self.with_predictions(audio, state, given)
        # The predictor's states at the segment's end are the streamed pass's (with_predictions leaves them).
        return res._replace(state={**res.state, **{k: final[k] for k in RLS_STATES}})

    @torch.no_grad()
    def predictions(self, audio: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Stream ``audio`` [B, n * hop] hop by hop from ``state`` and return the predictor's
        prediction of every frame, [B, n, 2, Fp] (what the step subtracts from X), and the final state.
        No gradient: the predictor's update is not trained through (``_rls_output``)."""
        hop, names = self.cfg.hop, self.state_names
        states, preds = tuple(state[k] for k in names), []
        for i in range(audio.shape[1] // hop):
            named = dict(zip(names, states))
            preds.append(predictor_torch.predict(named["rls_g"], self._regressor(named["pred_hist"])))
            states = self._forward(audio[:, i * hop:(i + 1) * hop], states, fast=True)[1:1 + len(names)]
        return torch.stack(preds, dim=1), dict(zip(names, states))

    def with_predictions(self, audio: Tensor, state: dict[str, Tensor], given: Tensor) -> StepOutput:
        """The step's output on ``audio`` [B, n * hop] from ``state`` when the predictor's predictions
        are ``given`` [B, n, 2, Fp] (from ``predictions`` with the same weights: then the output is the
        streaming step's, computed over all n frames at once, the LSTM as one sequence). Training uses
        it: the network's gradient through n frames without a Python loop over hops. The predictor's
        states come back unchanged."""
        out = self._forward(audio, tuple(state[k] for k in self.state_names), given)
        k = len(self.state_names)
        gate = out[1 + k:] if self.cfg.music_gate else (None, None)
        return StepOutput(out[0], dict(zip(self.state_names, out[1:1 + k])), *gate)

    def _rls_output(self, x_re: Tensor, x_im: Tensor, r_re: Tensor, r_im: Tensor, mr: Tensor, mi: Tensor,
                    passed: Tensor | None, named: dict[str, Tensor], regressor: Tensor, fast: bool = False
                    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """The output frame and the predictor's new states, for one frame: X, R [B, 1, F], the
        network's mask [B, 1, F], the music gate's pass-through share [B, 1, 1] (or None).

        E = mask * R is the early estimate. The output passes the *input* through where the gate does
        (E + share (X - E)): music comes out unchanged, as without the predictor. The predictor's
        target is X - E', with E' = E + share (R - E) (or, with ``rls_target = "input"``,
        E' = mask X + share (R - mask X)): where the gate passes through, the target is the
        prediction itself, so the filter does not move while music plays (the network's late estimate
        means nothing there). The target is detached: the update is not trained through (a first
        fine-tuning stage trains the network on the residual; end-to-end training is a later choice)."""
        cfg = self.cfg
        fp = cfg.rls_bins
        e_re, e_im = mr * r_re - mi * r_im, mr * r_im + mi * r_re
        if passed is not None:
            out_re, out_im = e_re + passed * (x_re - e_re), e_im + passed * (x_im - e_im)
            t_re, t_im = e_re + passed * (r_re - e_re), e_im + passed * (r_im - e_im)
        else:
            out_re, out_im, t_re, t_im = e_re, e_im, e_re, e_im
        if cfg.rls_target == "input":  # E' = mask X (blended towards X - prediction where the gate passes)
            pr_re, pr_im = x_re - r_re, x_im - r_im  # the prediction
            t_re, t_im = t_re + (mr * pr_re - mi * pr_im), t_im + (mr * pr_im + mi * pr_re)
            if passed is not None:
                t_re, t_im = t_re - passed * (mr * pr_re - mi * pr_im), t_im - passed * (mr * pr_im + mi * pr_re)
        target = torch.stack([(x_re - t_re)[:, 0, :fp], (x_im - t_im)[:, 0, :fp]], dim=1).detach()  # [B, 2, Fp]
        update = predictor_torch.update_complex if fast else predictor_torch.update
        g, p, level, weight = update(named["rls_g"], named["rls_p"], named["rls_level"],
                                                     named["rls_weight"], regressor, target, cfg.predictor_config())
        frame = torch.cat([x_re[..., :fp], x_im[..., :fp]], dim=2)  # [B, 1, 2Fp]
        hist = torch.cat([named["pred_hist"], frame], dim=1)[:, 1:]
        return out_re, out_im, (hist, g, p, level, weight)

    def _predict(self, spec: Tensor, past: Tensor, coef: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Subtract the linear prediction from past frames: spec [B, n, 2F] (re | im), past [B, M, 2F],
        coef [B, n, 2, K, F] -> (re, im [B, n, F] of the residual, new past [B, M, 2F])."""
        cfg = self.cfg
        f, d, m = cfg.bins, cfg.lp_delay, cfg.lp_frames
        full = torch.cat([past, spec], dim=1)  # [B, M + n, 2F]; frame t of the chunk is at M + t
        # Frame t - d - k for every t of the chunk: static slice bounds, so the ONNX graph serves any n.
        lagged = torch.stack([full[:, m - d - k : full.shape[1] - d - k] for k in range(cfg.lp_taps)], dim=2)
        pr, pi = lagged[..., :f], lagged[..., f:]  # [B, n, K, F]
        gr, gi = coef[:, :, 0], coef[:, :, 1]
        re = spec[..., :f] - (gr * pr - gi * pi).sum(2)
        im = spec[..., f:] - (gr * pi + gi * pr).sum(2)
        return re, im, full[:, full.shape[1] - m :]

    def enhance(self, audio: Tensor) -> Tensor:
        """Whole-segment processing from zero state, for training.

        Args:
            audio: [B, T] with T a multiple of hop.
        Returns:
            [B, T] output, delayed by ``cfg.step_latency`` samples (as the stream is).
        """
        state = self.initial_state(audio.shape[0])
        return self.step(audio, {k: v.to(audio) for k, v in state.items()}).audio


def load_checkpoint(path: str | Path, overrides: dict | None = None) -> tuple[MaskLSTM, dict]:
    """Load a training checkpoint safely (``weights_only=True``: no pickled code runs) into an eval-mode
    model, strictly (every weight present and used). ``overrides`` {ModelConfig field: value} change
    settings that carry no weights (the music hold's, say); one that changes a weight's shape fails the
    strict load. The returned checkpoint's ``model_config`` is the overridden one (``to_dict``), and
    ``export_overrides`` records what was changed."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if overrides:
        unknown = set(overrides) - set(ModelConfig().to_dict())
        if unknown:
            raise ValueError(f"not ModelConfig fields: {sorted(unknown)}")
        ckpt["export_overrides"] = dict(overrides)
    cfg = ModelConfig.from_dict({**ckpt["model_config"], **(overrides or {})})
    ckpt["model_config"] = cfg.to_dict()
    model = MaskLSTM(cfg)
    if cfg.rls_taps and cfg.rls_features == "both" and "proj_residual.weight" not in ckpt["model"]:
        # The residual's input layer grown onto a checkpoint without it: zero, as at init (GROWN_LAYERS).
        ckpt["model"] = {**ckpt["model"], **{f"proj_residual.{k}": v for k, v in model.proj_residual.state_dict().items()}}
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def rest_overrides(cfg: ModelConfig) -> dict[str, float]:
    """States whose rest value is set, not reached by silence: {state name: value for every element}.
    With ``music_start_open``, the hold is open (1) and no frame before the first was sure speech."""
    return {"music_hold": 1.0} if cfg.music_start_open and "music_hold" in cfg.state_names else {}


def gate_shares(logit: Tensor, hold: Tensor | None, cfg: ModelConfig,
                silent: Tensor) -> tuple[Tensor, Tensor | None]:
    """The pass-through share per frame [B, n] and the new hold state [B, k] (None without a hold).

    Clipped, so a frame that is surely speech (p <= GATE_OPEN) gets exactly the model's mask and one
    that is surely music (p >= GATE_SHUT) exactly 1: the model is unchanged on speech and transparent on
    music. ``silent`` [B, n] marks frames of digital silence (``cfg.music_quiet_dbfs``), which leave the
    hold as it was (see ``_hold``). The hold state is the last frame's share, then the last k - 1 raw (unheld) shares,
    oldest first (k = cfg.music_clear_frames), a silent frame's recorded as 1 (not sure of speech)."""
    keep = torch.clamp((GATE_SHUT - torch.sigmoid(logit)) / (GATE_SHUT - GATE_OPEN), 0.0, 1.0)
    raw = 1.0 - keep
    if hold is None:
        return raw, None
    share = _hold(raw, hold, silent, cfg.hop / (cfg.sample_rate * cfg.music_hold_seconds))
    k = hold.shape[1]
    if k == 1:
        return share, share[:, -1:]
    past = torch.cat([hold[:, 1:], torch.where(silent, torch.ones_like(raw), raw)], 1)[:, -(k - 1):]
    return share, torch.cat([share[:, -1:], past], 1)


def _hold(raw: Tensor, prev: Tensor, silent: Tensor, rate: float) -> Tensor:
    """Peak hold with exponential release along non-silent frames, cleared by k sure-speech frames in
    a row: out_t = out_{t-1} where frame t is silent; else 0 where raw_t-k+1..raw_t are all 0 and none
    of those frames silent; else max(raw_t, e^-rate out_{t-1}).

    raw [B, n] in [0, 1] (the pass-through share; 0 = the head is sure of speech), prev [B, k] (out
    before the first frame, then the k - 1 raw shares before it, oldest first, 1 for a silent frame),
    silent [B, n] bool -> out [B, n]. Clearing on sure speech means the hold only bridges frames the head
    is unsure of and never delays the model's return on speech by more than k - 1 frames. Silence
    freezes the hold because the head reads digital silence as speech: were it to clear (or release) an
    open hold, the rest state (open) would not be where silence leads, and a live stream, which idles
    in silence before its talker, would start elsewhere than a file. Written as a max over a
    lower-triangular [n, n] table of decayed values, masked where a clearing frame lies in between (a
    cumulative count), with time counted in non-silent frames (another cumulative count), instead of a
    loop over frames: the ONNX graph stays elementwise ops, CumSums and one ReduceMax (n is at most the
    engine's hops per call)."""
    n, k = raw.shape[1], prev.shape[1]
    t = torch.arange(n, device=raw.device)
    later = (t[:, None] >= t[None, :])[None]  # [1, t, s]
    heard = (~silent).to(raw.dtype)
    clock = torch.cumsum(heard, dim=1)  # [B, n]: non-silent frames up to t, the hold's time
    lag = clock[:, :, None] - clock[:, None, :]  # [B, t, s]
    sure = torch.cat([prev[:, 1:] <= 0.0, (raw <= 0.0) & ~silent], 1)  # [B, k - 1 + n]
    clear = sure[:, k - 1:]
    for j in range(1, k):  # and the j frames before were sure too
        clear = clear & sure[:, k - 1 - j: k - 1 - j + n]
    cleared = torch.cumsum(clear.to(raw.dtype), dim=1)  # [B, n]: clearing frames up to t
    # raw_s reaches frame t if s <= t and no clearing frame lies in (s, t]; a clearing frame's raw is 0,
    # a silent frame's counts as 0 (it adds nothing to the hold).
    reach = later & (cleared[:, :, None] == cleared[:, None, :])
    decay = torch.exp(-rate * lag.clamp_min(0.0))
    held = torch.where(reach, (raw * heard)[:, None, :] * decay, torch.zeros_like(decay)).amax(-1)
    carry = torch.where(cleared == 0, prev[:, :1] * torch.exp(-rate * clock), torch.zeros_like(raw))
    return torch.maximum(held, carry)


def init_weights(model: MaskLSTM, weights: dict[str, Tensor]) -> None:
    """Load a checkpoint's ``weights`` into ``model`` for fine-tuning. Layers the checkpoint lacks are
    allowed only if they are GROWN_LAYERS (zero output at init); anything else that does not fit raises."""
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes that differ
        raise ValueError(f"checkpoint does not fit this model: {e}") from None
    if unexpected or any(not k.startswith(GROWN_LAYERS) for k in missing):
        raise ValueError(f"checkpoint does not fit this model: missing {missing}, unexpected {unexpected}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_hop(cfg: ModelConfig) -> int:
    """Multiply-adds per hop per channel (DFTs, input layer, LSTM, mask layer, prediction, gate head and
    blend), for the model card."""
    f, h = cfg.bins, cfg.hidden
    n_feat, n_out = 3 * f, 2 * f
    dft = 2 * cfg.win * 2 * f
    proj = n_feat * cfg.input_proj * (2 if cfg.rls_taps and cfg.rls_features == "both" else 1)
    lstm_in = cfg.input_proj or n_feat
    lstm = 4 * h * (lstm_in + h) + (cfg.layers - 1) * 4 * h * (2 * h)
    predict = h * n_out * cfg.lp_taps + 4 * cfg.lp_taps * f  # the coefficients' layer, the complex products
    g = cfg.music_gate_hidden
    gate = (g * (h + 1) if g else h) + 2 * f if cfg.music_gate else 0  # the gate's head and its blend
    rls = predictor_macs(cfg.rls_bins, cfg.rls_taps)["per_hop"] if cfg.rls_taps else 0  # prediction and update
    return dft + proj + lstm + h * n_out + predict + gate + rls
