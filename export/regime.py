"""Export the regime TFT to ONNX, check parity with PyTorch, register it in the manifest.

``python -m export.regime`` reads a training run (``build/regime_tft`` by default, written
by ``python -m models.regime_tft``; ``--train`` or ``--quick`` trains first), exports
:class:`LeanRegimeTFT` (``encoder_cont [B, 32, 22] float32 -> probabilities [B, 7]``: 15
scaled market features and the one-hot causal label of each bar; the softmax of the
next-bar logits, persistence prior included, dynamic batch axis, opset 17, TorchScript exporter),
compares ONNX Runtime with the PyTorch model (``RegimeTFTExport``, pytorch-forecasting's
own forward) on every held-out window, refuses to register when the largest absolute
probability difference reaches :data:`PARITY_TOLERANCE`, and writes the artifact plus its
``ArtifactEntry`` (sha256, tensor specs, metrics, scaling) to ``models/artifacts``.

:class:`LeanRegimeTFT` computes the same function as pytorch-forecasting's forward with
the same weights in far fewer ONNX nodes and operations; batch-1 latency is made of
per-node overhead and of the 15 feature GRNs over 32 steps. Every linear map that can
be composed at export is composed (in float64): the prescalers with the variable
selection's flattened GRN (a (23, 46) map instead of a (736, 23) layer and a (736, 23)
resampling), each GRN's ``fc2`` with its gate, the attention's value projection,
``w_h`` and the next gate, and the query and key projections (each head's score of
step ``t`` is ``k_t`` times a vector of the query; terms equal for all ``t`` cancel in
the softmax). Each feature GRN is a function of one scalar ``x``: its first layer and
its skip path are affine in ``x``, and the skip's LayerNorm has a closed form (its mean
and variance are linear and quadratic in ``x``), so both come out of one small product
of ``[x, x r, r, 1]``; ``elu`` runs as ``relu(z) + exp(min(z, 0))`` (ONNX Runtime's Elu
kernel is four times slower), its ``- 1`` and the second layer's bias folded into that
layer. Variables with few values are tables computed by the TFT's own modules: the time
index (one value per step) and the 7 label channels (values 0..3, gathered); what does
not depend on the input (static contexts, initial LSTM state, the decoder step's
embedding, the attention mask) is computed once. Rows run time-major, the LSTM's
layout, so no transposes surround it, and only the decoder step goes through the layers
after the attention. Served at batch 1, ONNX Runtime runs 109 nodes instead of 146 of
the previous export form (which ran the 16 feature and time GRNs on the prescaled
embeddings as a stacked chain); see ``bench/results/model_inference.md`` for the
timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from export.manifest import ARTIFACTS, MANIFEST, ArtifactEntry, TensorSpec, register, sha256_file
from models.market_features import MARKET_FEATURES, WARMUP_BARS
from models.regime_runtime import INPUT_CHANNELS, LABEL_CHANNELS, PENDING_WEIGHT
from models.regime_tft import (
    DEFAULT_RUN_DIR,
    ENCODER_LENGTH,
    MODEL_NAME,
    N_CLASSES,
    TFT_HPARAMS,
    SavedRun,
    TrainConfig,
    torch_proba,
    train,
)
from models.regimes import REGIMES
from operators.errors import RiskstreamError

if TYPE_CHECKING:
    from pytorch_forecasting import TemporalFusionTransformer

PARITY_TOLERANCE = 1e-4
N_LABEL_VALUES = 4
"""Values a label channel takes: 0, 1 (label), 2 (pending label), 3 (both)."""
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "encoder_cont", "probabilities"
ARTIFACT_FILE = f"{MODEL_NAME}.onnx"
DEFAULT_VERSION = "1.0.0"

log = logging.getLogger(__name__)


class ParityError(RiskstreamError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


class ExportShapeError(RiskstreamError):
    """The TFT's configuration is not the one :class:`LeanRegimeTFT` reproduces."""


class LeanRegimeTFT(nn.Module):
    """``encoder_cont [B, T, F + 7] -> probabilities [B, 7]``, the TFT's forward in few nodes.

    The same function as ``RegimeTFTExport`` (full-length encoder windows, one decoder
    step with ``relative_time_idx`` 0, no static or categorical variables, plus
    :class:`~models.regime_tft.RegimeTFT`'s persistence prior: the log transition row of
    the last bar's pending label added to the logits scaled by ``correction_scale``),
    rebuilt from the TFT's weights with every linear map that can be composed at export
    composed (in float64, stored as float32): see the module docstring. Rows run in
    time-major order (``t * B + b``), the LSTM's own layout, so no transposes are needed
    around it.
    """

    def __init__(self, tft: TemporalFusionTransformer) -> None:
        super().__init__()
        _check_supported(tft)
        vsn = tft.encoder_variable_selection
        names = list(vsn.input_sizes)
        self.steps, self.hidden = ENCODER_LENGTH, int(tft.hparams.hidden_size)
        self.n_vars, self.n_cont = len(names), len(MARKET_FEATURES)
        self.label_lo, self.n_head = len(MARKET_FEATURES), int(tft.multihead_attn.n_head)
        self.width = int(vsn.single_variable_grns[names[1]].fc1.out_features)
        self.vs_hidden = int(vsn.flattened_grn.fc1.out_features)
        self.eps: dict[str, float] = {}
        with torch.no_grad():
            consts = {
                **self._selection_consts(tft),
                **self._variable_consts(tft),
                **self._table_consts(tft),
                **self._temporal_consts(tft),
                **self._attention_consts(tft),
            }
            self.lstm_encoder = _plain_lstm(tft.lstm_encoder)
            self.lstm_decoder = _plain_lstm(tft.lstm_decoder)
        for name, value in consts.items():
            self.register_buffer(name, value.detach().to(torch.float32).contiguous())
        self.register_buffer("label_offsets", torch.arange(N_CLASSES).view(-1, 1) * N_LABEL_VALUES)

    def _norm(self, key: str, norm: nn.LayerNorm) -> dict[str, torch.Tensor]:
        self.eps[key] = float(norm.eps)
        return {f"{key}_ln_g": _f64(norm.weight), f"{key}_ln_b": _f64(norm.bias)}

    def _selection_consts(self, tft: TemporalFusionTransformer) -> dict[str, torch.Tensor]:
        """The flattened GRN (variable weights) composed with the prescalers: a (V, 2V) map."""
        vsn, hidden = tft.encoder_variable_selection, self.hidden
        fg = vsn.flattened_grn
        ctx = tft.static_context_variable_selection(torch.zeros(1, hidden))
        wp, bp = _prescalers(vsn)  # (V, width) each
        fc1 = _blocks(_f64(fg.fc1.weight).T, self.n_vars)  # (V, width, hidden_vs)
        res = _blocks(_resample(fg.resample_norm, fc1.shape[0] * fc1.shape[1]), self.n_vars)
        weight = torch.cat([_fold_rows(wp, fc1), _fold_rows(wp, res)], dim=-1)
        bias = torch.cat(
            [
                _fold_rows(bp, fc1).sum(0) + _f64(fg.fc1.bias) + _f64(fg.context(ctx)[0]),
                _fold_rows(bp, res).sum(0),
            ]
        )
        glu_w, glu_b = _fc2_glu(fg)
        rel = torch.arange(-self.steps, 0, dtype=torch.float64) / self.steps
        return {
            "rel": rel.view(-1, 1, 1),
            "vs_w": weight,
            "vs_b": bias,
            "vs_glu_w": glu_w,
            "vs_glu_b": glu_b,
            **self._norm("vs_rn", fg.resample_norm.norm),
            **self._norm("vs_an", fg.gate_norm.add_norm.norm),
        }

    def _variable_consts(self, tft: TemporalFusionTransformer) -> dict[str, torch.Tensor]:
        """The 15 feature GRNs, stacked, each a function of one scalar ``x``.

        Prescaler, ``fc1`` and the skip path's resampling are affine in ``x``: ``fc1`` is
        ``x a1 + c1``, the skip ``s = x a + c`` with ``LayerNorm(s) = (x a' + c') r``
        (``a'``, ``c'`` centred, ``r = 1 / sqrt(x^2 Var a + 2 x Cov(a, c) + Var c + eps)``).
        Both come out of one product of ``[x, x r, r, 1]`` with a (4, width + 1 + H)
        matrix; its extra first-layer column is 0, where ``elu(z) + 1`` is 1 and carries
        the second layer's bias (``fc2`` and the gate composed; the ``+ 1`` compensated).
        """
        vsn = tft.encoder_variable_selection
        names = list(vsn.input_sizes)[1 : 1 + self.n_cont]
        grns = [vsn.single_variable_grns[n] for n in names]
        wp, bp = _prescalers(vsn)
        wp, bp = wp[1 : 1 + self.n_cont], bp[1 : 1 + self.n_cont]
        first = torch.stack([_f64(g.fc1.weight).T for g in grns])  # (F, width, width)
        res = torch.stack([_resample(g.resample_norm, self.width) for g in grns])  # (F, w, H)
        a1 = _fold_rows(wp, first)
        c1 = _fold_rows(bp, first) + torch.stack([_f64(g.fc1.bias) for g in grns])
        a, c = _fold_rows(wp, res), _fold_rows(bp, res)
        a, c = a - a.mean(-1, keepdim=True), c - c.mean(-1, keepdim=True)
        eps = torch.tensor([float(g.resample_norm.norm.eps) for g in grns], dtype=torch.float64)
        gain = torch.stack([_f64(g.resample_norm.norm.weight) for g in grns])
        shift = torch.stack([_f64(g.resample_norm.norm.bias) for g in grns])
        zeros, zero = torch.zeros_like(a1), torch.zeros(len(grns), 1, dtype=torch.float64)
        rows = [
            torch.cat([a1, zero, torch.zeros_like(a)], -1),  # x
            torch.cat([zeros, zero, a * gain], -1),  # x r
            torch.cat([zeros, zero, c * gain], -1),  # r
            torch.cat([c1, zero, shift], -1),  # 1
        ]
        glus = [_fc2_glu(g) for g in grns]
        second = [torch.cat([w, (b - w.sum(0)).unsqueeze(0)]) for w, b in glus]
        self.eps["var"] = float(grns[0].gate_norm.add_norm.norm.eps)

        def per_var(value: torch.Tensor) -> torch.Tensor:
            return value.view(-1, 1, 1)

        def stacked(get: Any) -> torch.Tensor:
            return torch.stack([_f64(get(g)) for g in grns]).unsqueeze(1)

        return {
            "var_qa": per_var((a * a).mean(-1)),
            "var_qb": per_var(2.0 * (a * c).mean(-1)),
            "var_qc": per_var((c * c).mean(-1) + eps),
            "var_in": torch.stack(rows, dim=1),
            "var_glu_w": torch.stack(second),
            "var_an_g": stacked(lambda g: g.gate_norm.add_norm.norm.weight),
            "var_an_b": stacked(lambda g: g.gate_norm.add_norm.norm.bias),
        }

    def _table_consts(self, tft: TemporalFusionTransformer) -> dict[str, torch.Tensor]:
        """GRN outputs of the variables with few values, by the TFT's own modules.

        ``relative_time_idx`` (one value per step: a (T, 1, H) table) and the label
        channels (values 0..3: a (7 * 4, H) table).
        """
        vsn = tft.encoder_variable_selection
        names = list(vsn.input_sizes)
        rel = torch.arange(-self.steps, 0, dtype=torch.float32).view(-1, 1) / self.steps
        rel_out = vsn.single_variable_grns[names[0]](vsn.prescalers[names[0]](rel))
        values = torch.arange(N_LABEL_VALUES, dtype=torch.float32).view(-1, 1)
        labels = [
            vsn.single_variable_grns[n](vsn.prescalers[n](values)) for n in names[1 + self.n_cont :]
        ]
        return {"rel_table": rel_out.unsqueeze(1), "label_table": torch.cat(labels)}

    def _temporal_consts(self, tft: TemporalFusionTransformer) -> dict[str, torch.Tensor]:
        """LSTM initial state and decoder input, post-LSTM gate, static enrichment."""
        hidden = self.hidden
        static = torch.zeros(1, hidden)
        layers = int(tft.hparams.lstm_layers)
        ctx_vs = tft.static_context_variable_selection(static)
        dec, _ = tft.decoder_variable_selection(
            {"relative_time_idx": torch.zeros(1, 1, 1)}, ctx_vs.unsqueeze(1)
        )
        se = tft.static_enrichment
        se_ctx = se.context(tft.static_context_enrichment(static))[0]
        se_w, se_b = _fc2_glu(se)
        gate = tft.post_lstm_gate_encoder.fc
        return {
            "h0": tft.static_context_initial_hidden_lstm(static).expand(layers, 1, hidden),
            "c0": tft.static_context_initial_cell_lstm(static).expand(layers, 1, hidden),
            "dec_in": dec.reshape(1, 1, hidden),
            "post_w": _f64(gate.weight).T,
            "post_b": _f64(gate.bias),
            **self._norm("post", tft.post_lstm_add_norm_encoder.norm),
            "se_fc1_w": _f64(se.fc1.weight).T,
            "se_fc1_b": _f64(se.fc1.bias) + _f64(se_ctx),
            "se_glu_w": se_w,
            "se_glu_b": se_b,
            **self._norm("se", se.gate_norm.add_norm.norm),
        }

    def _attention_consts(self, tft: TemporalFusionTransformer) -> dict[str, torch.Tensor]:
        """Attention of the decoder step and the layers after it.

        Head ``h``'s score of step ``t`` is ``q Wq_h (k_t Wk_h)^T / sqrt(d_k)`` up to terms
        that do not depend on ``t`` (which the softmax over ``t`` cancels): ``k_t`` times a
        query vector ``q M_h + m_h``, all heads' ``M_h`` side by side. The value
        projection, ``w_h`` and the gate's linear layer compose into one map, since the
        averaged attention weights sum to one.
        """
        mha = tft.multihead_attn
        root = math.sqrt(float(mha.d_k))
        wk = [_f64(k.weight) for k in mha.k_layers]
        query = [_f64(q.weight).T @ k / root for q, k in zip(mha.q_layers, wk, strict=True)]
        query_b = [_f64(q.bias) @ k / root for q, k in zip(mha.q_layers, wk, strict=True)]
        pa = tft.post_attn_gate_norm.glu.fc
        out = _f64(mha.w_h.weight).T @ _f64(pa.weight).T  # (d_v, 2H)
        ff = tft.pos_wise_ff
        ff_w, ff_b = _fc2_glu(ff)
        po = tft.pre_output_gate_norm.glu.fc
        scale = float(tft.correction_scale)
        return {
            "att_q": torch.cat(query, dim=1),
            "att_qb": torch.cat(query_b),
            "att_w": _f64(mha.v_layer.weight).T @ out,
            "att_b": _f64(mha.v_layer.bias) @ out + _f64(pa.bias),
            **self._norm("pa", tft.post_attn_gate_norm.add_norm.norm),
            "ff_fc1_w": _f64(ff.fc1.weight).T,
            "ff_fc1_b": _f64(ff.fc1.bias),
            "ff_glu_w": ff_w,
            "ff_glu_b": ff_b,
            **self._norm("ff", ff.gate_norm.add_norm.norm),
            "po_w": _f64(po.weight).T,
            "po_b": _f64(po.bias),
            **self._norm("po", tft.pre_output_gate_norm.add_norm.norm),
            "w_out": _f64(tft.output_layer.weight).T * scale,
            "b_out": _f64(tft.output_layer.bias) * scale,
            "log_transition": _f64(tft.log_transition),
        }

    def _buf(self, name: str) -> torch.Tensor:
        value: torch.Tensor = getattr(self, name)
        return value

    def _ln(self, x: torch.Tensor, key: str) -> torch.Tensor:
        g, b = self._buf(f"{key}_ln_g"), self._buf(f"{key}_ln_b")
        return F.layer_norm(x, (g.shape[0],), g, b, eps=self.eps[key])

    def _selection_weights(self, flat: torch.Tensor) -> torch.Tensor:
        """Variable selection weights of rows ``flat`` (N, V): (V, N, 1)."""
        b = self._buf
        first, res = (flat @ b("vs_w") + b("vs_b")).split([self.vs_hidden, self.n_vars], -1)
        gated = F.glu(F.elu(first) @ b("vs_glu_w") + b("vs_glu_b"), dim=-1)
        selection = self._ln(gated + self._ln(res, "vs_rn"), "vs_an")
        return torch.softmax(selection, dim=-1).T.unsqueeze(-1)

    def _feature_grns(self, x: torch.Tensor) -> torch.Tensor:
        """The 15 feature GRNs of values ``x`` (F, N, 1): (F, N, H)."""
        b, hidden = self._buf, self.hidden
        r = torch.rsqrt((x * b("var_qa") + b("var_qb")) * x + b("var_qc"))
        terms = torch.cat([x, x * r, r, torch.ones_like(x)], dim=-1)  # (F, N, 4)
        first, skip = (terms @ b("var_in")).split([self.width + 1, hidden], dim=-1)
        elu_1 = torch.relu(first) + torch.exp(torch.clamp(first, max=0.0))  # elu + 1
        value, gate = (elu_1 @ b("var_glu_w")).split(hidden, dim=-1)
        y = value * torch.sigmoid(gate) + skip
        eps = self.eps["var"]
        return F.layer_norm(y, (hidden,), eps=eps) * b("var_an_g") + b("var_an_b")

    def _encoder_embedding(self, encoder_cont: torch.Tensor) -> torch.Tensor:
        """Encoder variable selection: (T * B, H), rows time-major."""
        b, steps, hidden = self._buf, self.steps, self.hidden
        batch = encoder_cont.shape[0]
        xt = encoder_cont.transpose(0, 1)  # (T, B, C)
        flat = torch.cat([b("rel").expand(steps, batch, 1), xt], dim=-1)
        weights = self._selection_weights(flat.reshape(-1, self.n_vars))
        xv = encoder_cont.permute(2, 1, 0).reshape(self.n_vars - 1, -1)  # (C, T * B)
        cont, labels = xv.split([self.n_cont, N_CLASSES])
        y_cont = self._feature_grns(cont.unsqueeze(-1))
        y_lab = b("label_table")[labels.to(torch.int64) + b("label_offsets")]  # (7, N, H)
        y_rel = b("rel_table").expand(steps, batch, hidden).reshape(1, -1, hidden)
        return (torch.cat([y_rel, y_cont, y_lab]) * weights).sum(dim=0)

    def _lstm(self, enc: torch.Tensor, batch: int) -> torch.Tensor:
        """Encoder and decoder LSTMs with the gated skip: (T * B + B, H)."""
        b, hidden = self._buf, self.hidden
        state = (
            b("h0").expand(-1, batch, -1).contiguous(),
            b("c0").expand(-1, batch, -1).contiguous(),
        )
        enc_out, state = self.lstm_encoder(enc.reshape(self.steps, batch, hidden), state)
        dec = b("dec_in").expand(1, batch, hidden)
        dec_out, _ = self.lstm_decoder(dec, state)
        out = torch.cat([enc_out, dec_out]).reshape(-1, hidden)
        skip = torch.cat([enc, dec.reshape(-1, hidden)])
        return self._ln(F.glu(out @ b("post_w") + b("post_b"), dim=-1) + skip, "post")

    def _decoder_step(self, lstm_out: torch.Tensor, batch: int) -> torch.Tensor:
        """Static enrichment, attention of the decoder step and the layers after it: (B, H)."""
        b, steps, hidden = self._buf, self.steps, self.hidden
        h = F.elu(lstm_out @ b("se_fc1_w") + b("se_fc1_b")) @ b("se_glu_w") + b("se_glu_b")
        enriched = self._ln(F.glu(h, dim=-1) + lstm_out, "se").reshape(steps + 1, batch, hidden)
        keys, query = enriched.split([steps, 1])
        query = query.reshape(-1, hidden)
        q = (query @ b("att_q") + b("att_qb")).reshape(1, -1, self.n_head, hidden)
        scores = (keys.unsqueeze(2) * q).sum(dim=-1)  # (T, B, heads)
        attention = torch.softmax(scores, dim=0).mean(dim=-1, keepdim=True)  # (T, B, 1)
        context = (attention * keys).sum(dim=0)  # (B, H)
        x = self._ln(F.glu(context @ b("att_w") + b("att_b"), dim=-1) + query, "pa")
        h = F.elu(x @ b("ff_fc1_w") + b("ff_fc1_b")) @ b("ff_glu_w") + b("ff_glu_b")
        x = self._ln(F.glu(h, dim=-1) + x, "ff")
        lstm_dec = lstm_out.reshape(steps + 1, batch, hidden)[steps]
        return self._ln(F.glu(x @ b("po_w") + b("po_b"), dim=-1) + lstm_dec, "po")

    def forward(self, encoder_cont: torch.Tensor) -> torch.Tensor:
        b = self._buf
        batch = encoder_cont.shape[0]
        enc = self._encoder_embedding(encoder_cont)
        out = self._decoder_step(self._lstm(enc, batch), batch)
        # RegimeTFT's persistence prior: the log transition row of the last bar's pending
        # label (its label channels >= 2)
        last = encoder_cont[:, -1, self.label_lo :]
        pending = (last >= PENDING_WEIGHT - 0.5).to(encoder_cont.dtype)
        logits = out @ b("w_out") + b("b_out") + pending @ b("log_transition")
        return torch.softmax(logits, dim=-1)


def _check_supported(tft: TemporalFusionTransformer) -> None:
    """Refuse a TFT whose configuration :class:`LeanRegimeTFT` does not reproduce."""
    vsn = tft.encoder_variable_selection
    names = list(vsn.input_sizes)
    grns = [vsn.single_variable_grns[n] for n in names]
    steps = ENCODER_LENGTH
    if (
        tft.static_variables
        or tft.hparams.x_categoricals
        or names != list(tft.hparams.x_reals)
        or names[0] != "relative_time_idx"
        or tft.decoder_variables != ["relative_time_idx"]
        or set(vsn.prescalers) != set(names)
        or names[1:] != list(INPUT_CHANNELS)
        or not hasattr(tft, "log_transition")
        or not hasattr(tft, "correction_scale")
        or len({int(s) for s in vsn.input_sizes.values()}) != 1
        or any(not hasattr(g, "resample_norm") for g in [*grns, vsn.flattened_grn])
        or hasattr(tft.static_enrichment, "resample_norm")
        or hasattr(tft.pos_wise_ff, "resample_norm")
        or tft.post_lstm_gate_decoder is not tft.post_lstm_gate_encoder
        or tft.post_lstm_add_norm_decoder is not tft.post_lstm_add_norm_encoder
    ):
        raise ExportShapeError(f"{MODEL_NAME}: unexpected TFT variables {names}")
    add_norms = [g.gate_norm.add_norm for g in grns]
    add_norms += [vsn.flattened_grn.gate_norm.add_norm, tft.post_lstm_add_norm_encoder]
    add_norms += [tft.static_enrichment.gate_norm.add_norm, tft.pos_wise_ff.gate_norm.add_norm]
    add_norms += [tft.post_attn_gate_norm.add_norm, tft.pre_output_gate_norm.add_norm]
    if any(a.trainable_add or a.input_size != a.skip_size for a in add_norms):
        raise ExportShapeError(f"{MODEL_NAME}: trainable or resampled skip connections")
    mask = tft.get_attention_mask(
        encoder_lengths=torch.tensor([steps]), decoder_lengths=torch.tensor([1])
    )
    hides_decoder_only = torch.zeros(1, 1, steps + 1, dtype=torch.bool)
    hides_decoder_only[..., steps:] = True
    if not torch.equal(mask, hides_decoder_only):
        raise ExportShapeError(f"{MODEL_NAME}: attention mask {mask.tolist()}")


def _f64(value: torch.Tensor) -> torch.Tensor:
    return value.detach().to(torch.float64)


def _prescalers(vsn: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Every variable's prescaler ``Linear(1, width)``: weights and biases, (V, width) each."""
    scalers = [vsn.prescalers[n] for n in vsn.input_sizes]
    weight = torch.stack([_f64(s.weight[:, 0]) for s in scalers])
    return weight, torch.stack([_f64(s.bias) for s in scalers])


def _blocks(matrix: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of ``matrix`` (n * width, out) split into ``n`` blocks: (n, width, out)."""
    return matrix.reshape(n, -1, matrix.shape[-1])


def _fold_rows(rows: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Row ``v`` of ``rows`` (V, width) through block ``v`` of ``blocks`` (V, width, out)."""
    return torch.einsum("vw,vwo->vo", rows, blocks)


def _resample(norm: Any, size: int) -> torch.Tensor:
    """A ResampleNorm's interpolation and trainable gate as a (size, out) matrix."""
    matrix = _f64(norm.resample(torch.eye(size)))
    if norm.trainable_add:
        matrix = matrix * (torch.sigmoid(_f64(norm.mask)) * 2.0)
    return matrix


def _fc2_glu(grn: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A GRN's ``fc2`` composed with its gate's linear layer: (hidden, 2 out) and bias."""
    fc2, glu = grn.fc2, grn.gate_norm.glu.fc
    weight = _f64(glu.weight).T
    return _f64(fc2.weight).T @ weight, _f64(fc2.bias) @ weight + _f64(glu.bias)


def _plain_lstm(lstm: nn.LSTM) -> nn.LSTM:
    """A time-major ``nn.LSTM`` with ``lstm``'s weights (full-length windows: no packing)."""
    plain = nn.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, batch_first=False)
    plain.load_state_dict(lstm.state_dict())
    return plain.eval()


def onnx_bytes(model: TemporalFusionTransformer, version: str) -> bytes:
    """The serialised ONNX model of :class:`LeanRegimeTFT`, with name/version metadata."""
    import onnx

    wrapper = LeanRegimeTFT(model).eval()
    example = torch.zeros(2, ENCODER_LENGTH, len(INPUT_CHANNELS), dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / ARTIFACT_FILE
        torch.onnx.export(
            wrapper,
            (example,),
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
        proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {"name": MODEL_NAME, "version": version, "regimes": ",".join(r.value for r in REGIMES)}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "Regime TFT: next-bar probabilities of the 7 market regimes"
    return bytes(proto.SerializeToString())


def onnx_proba(model_bytes: bytes, scaled: npt.NDArray[np.float32], batch: int = 256) -> Any:
    """Probabilities of scaled windows with ONNX Runtime (served options), in batches."""
    from models.runtime import inference_session

    session = inference_session(model_bytes, batch=1 if batch == 1 else None)
    parts = [
        session.run([OUTPUT_NAME], {INPUT_NAME: scaled[lo : lo + batch]})[0]
        for lo in range(0, len(scaled), batch)
    ]
    return np.concatenate(parts) if parts else np.empty((0, N_CLASSES), np.float32)


def parity_max_abs(
    model: TemporalFusionTransformer, model_bytes: bytes, scaled: npt.NDArray[np.float32]
) -> float:
    """Largest |ONNX - PyTorch| probability over ``scaled`` windows (batches of 256 and 1)."""
    reference = torch_proba(model, scaled)
    batched = onnx_proba(model_bytes, scaled)
    single = onnx_proba(model_bytes, scaled[:16], batch=1)
    worst = float(np.max(np.abs(batched - reference))) if len(scaled) else 0.0
    if len(single):
        worst = max(worst, float(np.max(np.abs(single - reference[:16]))))
    return worst


def export_run(
    run: SavedRun,
    artifacts: Path = ARTIFACTS,
    manifest: Path = MANIFEST,
    version: str = DEFAULT_VERSION,
    tolerance: float = PARITY_TOLERANCE,
) -> ArtifactEntry:
    """Export ``run``, check parity on its held-out windows, write and register the artifact."""
    model_bytes = onnx_bytes(run.model, version)
    scaled = run.model_input()
    parity = parity_max_abs(run.model, model_bytes, scaled)
    if not parity < tolerance:
        raise ParityError(
            f"{MODEL_NAME}: ONNX and PyTorch probabilities differ by {parity:.3g}"
            f" (tolerance {tolerance:g}); not registering"
        )
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / ARTIFACT_FILE
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(model_bytes)
    tmp.replace(path)
    metrics = {k: float(v) for k, v in run.metrics.items()}
    metrics["parity_max_abs"] = parity
    metrics["parity_windows"] = float(len(scaled))
    entry = ArtifactEntry(
        name=MODEL_NAME,
        version=version,
        file=ARTIFACT_FILE,
        sha256=sha256_file(path),
        inputs=[TensorSpec(INPUT_NAME, "float32", [None, ENCODER_LENGTH, len(INPUT_CHANNELS)])],
        outputs=[TensorSpec(OUTPUT_NAME, "float32", [None, N_CLASSES])],
        metrics=metrics,
        extra=_extra(run),
    )
    register(entry, manifest)
    return entry


def training_data(run: SavedRun) -> dict[str, Any]:
    """The run's canonical training-data description and its fingerprint (sha256).

    The same description ``python -m models.evaluate`` records (it rebuilds the splits of
    the run's configuration), so a fresh export already carries the fingerprint.
    """
    from models.evaluate import fingerprint, regime_description
    from models.market_features import market_bars_from_real
    from models.regime_tft import build_splits

    raw = run.meta.get("config", {})
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    config = TrainConfig(**fields)
    dates = market_bars_from_real().index if config.use_real else None
    description = regime_description(config, build_splits(config), dates)
    return {"training_data_fingerprint": fingerprint(description), "training_data": description}


def _extra(run: SavedRun) -> dict[str, Any]:
    config = run.meta.get("config", {})
    return {
        **training_data(run),
        "features": list(MARKET_FEATURES),
        "feature_module": "models.market_features.MarketFeatures",
        "label_channels": list(LABEL_CHANNELS),
        "input_channels": list(INPUT_CHANNELS),
        "input_note": "encoder_cont[..., :15] = scaled features, encoder_cont[..., 15:] ="
        " label channels of each bar by the causal labeler below: 1 on the bar's label + 2 on"
        " its pending label (3: no switch pending) (models.regime_runtime.encoder_input,"
        " RegimeWindow)",
        "labeler": run.meta["labeler"],
        "labeler_module": "models.labeler.StreamingLabeler (= RegimeLabeler.label, causal)",
        "persistence_prior": {
            "note": "logits = correction_scale * TFT logits + log_transition[pending label"
            " of the last bar]; log_transition"
            " = log training transition matrix of the observed labels (models.regime_tft."
            "transition_log_prior, kind = training.prior); correction_scale = the shrinkage"
            " with the lowest log-loss on the real validation span (models.regime_tft."
            "fit_correction_scale)",
            "log_transition": run.model.log_transition.detach().double().numpy().tolist(),
            "correction_scale": float(run.model.correction_scale),
        },
        "scaling": run.scaling.to_dict(),
        "scaling_note": "raw features -> clip((x - mean) / std, -clip, clip), float32;"
        " label channels are not scaled",
        "encoder_length": ENCODER_LENGTH,
        "warmup_bars": WARMUP_BARS,
        "regimes": [r.value for r in REGIMES],
        "predicts": "probabilities of the regime of the bar after the window's last bar",
        "architecture": {"model": "pytorch_forecasting.TemporalFusionTransformer", **TFT_HPARAMS},
        "onnx_graph": "export.regime.LeanRegimeTFT (linear maps composed, feature GRNs stacked in"
        " closed form, constants folded, time-major rows)",
        "training": {
            "sim_train_seeds": config.get("sim_train_seeds"),
            "sim_test_seeds": config.get("sim_test_seeds"),
            "real_train_end": config.get("real_train_end"),
            "real_val_end": config.get("real_val_end"),
            "use_real": config.get("use_real"),
            "prior": config.get("prior"),
            "balance_sources": config.get("balance_sources"),
            "max_epochs": config.get("max_epochs"),
            "limit_train_batches": config.get("limit_train_batches"),
            "epochs_run": run.metrics.get("epochs"),
            "train_seconds": run.meta.get("train_seconds"),
        },
        "baseline": "persistence of the observed label (the labeler's label at t); statsmodels"
        " MarkovRegression(k=3, switching_variance) filtered probabilities mapped to regimes by"
        " training co-occurrence",
        "confusion_test": run.meta.get("report", {}).get("confusion", {}),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.regime [--train | --quick] [--run-dir DIR] [--version V]``."""
    parser = argparse.ArgumentParser(prog="python -m export.regime", description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--train", action="store_true", help="train the full model first")
    parser.add_argument("--quick", action="store_true", help="train the quick model first")
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    parser.add_argument("--manifest", type=Path, default=None)
    parser.add_argument("--version", default=DEFAULT_VERSION)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.train or args.quick:
        config = TrainConfig.quick_config() if args.quick else TrainConfig()
        train(config, args.run_dir).save(args.run_dir)
    run = SavedRun.load(args.run_dir)
    manifest = args.manifest or args.artifacts / MANIFEST.name
    entry = export_run(run, args.artifacts, manifest, args.version)
    size = (args.artifacts / entry.file).stat().st_size
    summary: dict[str, Any] = {"file": str(args.artifacts / entry.file), "bytes": size}
    summary.update(sha256=entry.sha256, **entry.metrics)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
