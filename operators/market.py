"""The market step: market bars, regime inference and volatility forecasts, in event time.

One key (``"market"``) receives every instrument's bar-close :class:`Mark`. Marks of one
instrument arrive in order; marks of different instruments arrive in any interleaving,
and every output depends on event time and data only, never on that interleaving.

Market bars
    The candidate bar ends are the ``ts_event`` of the marks of the *bar instruments*
    (index, rate bond, credit bond and any ``breadth_ids``). A bar end ``E`` is complete
    once every bar instrument has sent a mark with ``ts_event >= E``: its marks up to
    ``E`` have then all arrived, so the value it contributes (its last mark at or before
    ``E``, carried forward when it skipped ``E``) is final. Bars are built in ``E`` order.
    A bar with an instrument that has no mark at or before ``E`` (``missing_input``) or
    values the features reject (``invalid_bar``) is skipped and counted in
    ``MarketState.counts``.
Regime
    Every complete bar updates the :class:`~models.regime_runtime.RegimeWindow`: the
    market features and the causal rule-based label of the bar (a
    :class:`~models.labeler.StreamingLabeler` with the centroids of the regime model's
    manifest, whose hysteresis state is part of the snapshot); the windows (features and
    labels of the last 32 bars) of all bars completed in one ``on_batch`` go to the regime
    model in one ``predict_proba`` call.
    Each bar gives a :class:`RegimeUpdate` (empty probabilities, with a ``status``, while
    the window warms up, for skipped bars and when the model is unavailable or failed)
    and, when there are probabilities, a :class:`RegimeOut` with a ``RegimeEvent`` record.
Volatility
    Every instrument that sends marks keeps an N-BEATS history and a GARCH state, fed with
    its marks' log returns *in event time*: a mark is applied only when the first complete
    bar at or after it is processed, so the state used at bar ``E`` holds exactly the
    instrument's marks up to ``E``. The forecast of instrument ``Y`` at bar ``E`` is made
    once bar ``E`` is complete **and** ``Y`` has sent a mark with ``ts_event >= E``, from
    ``Y``'s last mark at or before ``E`` (its own bar ``E``, or the one before when it
    skipped ``E``). All forecasts that became possible in one ``on_batch`` are stacked
    into one ``[B, 64]`` N-BEATS call; the ensemble blends them with bar ``E``'s regime
    probabilities, or with the training prior of the regimes (``extra.ensemble.prior`` of
    the manifest; uniform if absent) when bar ``E`` has none.
Bounds
    Complete bars are kept for ``bar_retention`` bars, so an instrument whose marks arrive
    more than that many bars behind the bar instruments loses the forecasts of the
    dropped bars (``counts["vol_bars_lost"]``). More than ``max_pending_bars`` pending bar
    ends (a bar instrument absent or far behind) close the oldest one anyway
    (``counts["forced_bars"]``). Within these bounds, outputs are the same for every
    arrival order. At the end of input pending bars stay pending: they are completed by
    the marks that prove them over, also after a restart.
Models
    Loaded once per process (:func:`cached_model`), sha256-verified. A missing or
    mismatched artifact, or a call that raises, never stops the flow: it is counted in
    ``riskstream_model_load_failures_total{model}`` and shows in ``MarketState.model_status``
    and ``RegimeUpdate.status``. Each model degrades on its own: without the regime model
    every RegimeUpdate has empty probabilities (and vol forecasts use the prior); without
    the vol model there are no VolForecasts. ONNX sessions are not part of the state.
Shadow models
    A candidate model set (``shadow_artifacts``: its own manifest and artifacts) runs
    beside the live one on the same windows and rows, after the live call. It only feeds
    metrics: argmax regime agreement, the total-variation distance of the probabilities,
    the relative difference of the vol forecasts (both ensembles blend with the live
    regime probabilities, so the comparison isolates the vol model). It never changes
    outputs or state; its failures are counted in ``riskstream_shadow_failures_total``.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from bytewax.operators import StatefulBatchLogic

from export.manifest import ARTIFACTS
from models.drift import PsiMonitor
from models.market_features import FeatureWindow, MarketFeatureError
from models.regime_runtime import (
    ENCODER_LENGTH,
    RegimeWindow,
    labeler_from_extra,
    predict_proba,
    reads_labels,
    regime_summary,
)
from models.regime_runtime import MODEL_NAME as REGIME_MODEL
from models.regimes import REGIMES
from models.runtime import LoadedModel, load_model
from models.vol_ensemble import MODEL_NAME as VOL_MODEL
from models.vol_ensemble import GarchVariance, LogVolHistory, VolEnsemble, psi_inputs
from operators import metrics
from operators.records import Mark, Record, StateWrite
from operators.snapshot import freeze, thaw

FloatArray = npt.NDArray[np.float64]

OK = "ok"
WARMING_UP = "warming_up"
MISSING_INPUT = "missing_input"
INVALID_BAR = "invalid_bar"
UNAVAILABLE = "unavailable"
INFERENCE_FAILED = "inference_failed"


@dataclass(frozen=True)
class ModelSources:
    """The model sets a process runs: live, and an optional shadow candidate."""

    live: Path = ARTIFACTS
    """Directory with ``manifest.json`` and the artifacts it names."""
    shadow: Path | None = None


_SOURCES = ModelSources()


def use_model_sources(sources: ModelSources) -> None:
    """Set this process's model sets, the default of every MarketConfig built afterwards.

    The application calls it from its settings before building the flow (operators read
    no environment); a MarketConfig given explicit paths ignores it.
    """
    global _SOURCES
    _SOURCES = sources


def model_sources() -> ModelSources:
    """The model sets of this process."""
    return _SOURCES


@dataclass(frozen=True)
class MarketConfig:
    """Parameters of the market step (no I/O, no environment)."""

    index_id: str = "SIM-IDX"
    """Equity index: ``index_close`` and, without ``breadth_ids``, spread and volume."""
    rate_id: str = "SIM-UST-10Y"
    """Government bond whose bar yield is ``rate``."""
    credit_id: str = "SIM-IG-7Y"
    """Corporate bond: ``credit_spread`` = its bar yield - the rate bond's."""
    breadth_ids: tuple[str, ...] = ()
    """Equities whose mean spread and total volume give ``spread_bps`` and ``volume`` (what
    the regime model was trained on); empty: the index mark's own spread and volume."""
    scope: str = "GLOBAL"
    """``RegimeEvent.scope``."""
    regime_model: str = REGIME_MODEL
    vol_model: str = VOL_MODEL
    artifacts: Path = field(default_factory=lambda: _SOURCES.live)
    manifest: Path | None = None
    """Manifest file; None: ``artifacts / "manifest.json"``."""
    shadow_artifacts: Path | None = field(default_factory=lambda: _SOURCES.shadow)
    """Candidate model set run in shadow (metrics only); None: no shadow."""
    shadow_manifest: Path | None = None
    """Its manifest; None: ``shadow_artifacts / "manifest.json"``."""
    coverage: float = 0.9
    """Nominal coverage of the ``lo``/``hi`` conformal band (one the manifest stores)."""
    bar_retention: int = 256
    """Complete bars kept for instruments whose marks arrive behind the bar instruments."""
    max_pending_bars: int = 256
    """Pending bar ends beyond this close the oldest one without waiting."""
    psi_window: int = 12_000
    """Effective number of values per feature in the drift PSI (exponential forgetting)."""

    def __post_init__(self) -> None:
        """Reject sizes that cannot work."""
        for name in ("bar_retention", "max_pending_bars", "psi_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"MarketConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def bar_ids(self) -> tuple[str, ...]:
        """Instruments every market bar waits for."""
        ids = (self.index_id, self.rate_id, self.credit_id, *self.breadth_ids)
        return tuple(dict.fromkeys(ids))

    @property
    def manifest_path(self) -> Path:
        """The manifest the models are verified against."""
        return self.manifest or self.artifacts / "manifest.json"

    @property
    def shadow_manifest_path(self) -> Path:
        """The manifest the shadow models are verified against."""
        if self.shadow_manifest is not None:
            return self.shadow_manifest
        return (self.shadow_artifacts or self.artifacts) / "manifest.json"


# ---------------------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True, slots=True)
class RegimeOut:
    """A ``RegimeEvent`` record (schemas/RegimeEvent.avsc) bound for ``market.regimes``."""

    record: Record


@dataclass(frozen=True, slots=True)
class RegimeUpdate:
    """The regime as of bar end ``ts_event``, for the shards (one per complete bar)."""

    ts_event: int
    probabilities: tuple[float, ...]
    """7 probabilities in model order; empty when unknown (see ``status``)."""
    most_likely: str
    """Regime name, ``""`` when unknown."""
    version: str
    """Regime model version, ``""`` when the model is unavailable."""
    status: str = OK
    """``ok``, ``warming_up``, ``missing_input``, ``invalid_bar``, ``unavailable`` or
    ``inference_failed``."""


@dataclass(frozen=True, slots=True)
class VolForecast:
    """Per-bar realized volatility of the next ``h`` bars, forecast at bar end ``ts_event``.

    ``vol`` is ``exp(E[log rv])`` (``VolEnsemble.sigma`` turns it into a Gaussian per-bar
    sd); ``lo``/``hi`` bound the conformal band of ``MarketConfig.coverage``.
    """

    instrument_id: str
    ts_event: int
    vol: float
    lo: float
    hi: float
    version: str
    sigma: float = math.nan
    """Per-bar return standard deviation implied by ``vol`` (what VaR scales with)."""


MarketOut = RegimeOut | RegimeUpdate | VolForecast


def no_forecast(instrument_id: str, ts: int) -> VolForecast:
    """An instrument reached bar end ``ts`` without a forecast (warming up, no model).

    All NaN: the shards know not to wait for one (replays wait for each bar's forecasts).
    """
    return VolForecast(instrument_id, ts, math.nan, math.nan, math.nan, "")


# ---------------------------------------------------------------------------------------
# Models, once per process


@dataclass(frozen=True)
class _Unavailable:
    reason: str


LIVE = "live"
SHADOW = "shadow"

_MODELS: dict[tuple[str, str, Path, Path], LoadedModel | _Unavailable] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(name: str, manifest: Path, artifacts: Path, role: str = LIVE) -> LoadedModel | str:
    """The verified model, or why it cannot be used; loaded (or refused) once per process.

    A refusal is counted once, in ``riskstream_model_load_failures_total{model}`` (live)
    or ``riskstream_shadow_failures_total{model}`` (shadow); a load sets
    ``riskstream_model_info{role,model,version,sha256}``.
    """
    key = (role, name, manifest, artifacts)
    with _MODELS_LOCK:
        hit = _MODELS.get(key)
        if hit is None:
            try:
                hit = load_model(name, manifest, artifacts)
            except Exception as exc:  # ArtifactError, but also a broken manifest or file
                hit = _Unavailable(f"market: cannot load {role} model {name!r}: {exc}")
                failures = metrics.MODEL_LOAD_FAILURES if role == LIVE else metrics.SHADOW_FAILURES
                failures.labels(model=name).inc()
            else:
                entry = hit.entry
                metrics.MODEL_INFO.labels(
                    role=role, model=name, version=entry.version, sha256=entry.sha256
                ).set(1)
            _MODELS[key] = hit
    return hit.reason if isinstance(hit, _Unavailable) else hit


def preload_models(config: MarketConfig) -> dict[str, str]:
    """Load the live (and shadow) models now; why each live model cannot be used, by name.

    Every process calls this at start-up, so each one exports ``riskstream_model_info``
    and can answer readiness, wherever the market step itself runs.
    """
    problems = {}
    for name in (config.regime_model, config.vol_model):
        hit = cached_model(name, config.manifest_path, config.artifacts)
        if isinstance(hit, str):
            problems[name] = hit
        if config.shadow_artifacts is not None:
            cached_model(name, config.shadow_manifest_path, config.shadow_artifacts, SHADOW)
    return problems


def clear_model_cache() -> None:
    """Forget loaded models (tests; a process normally keeps them)."""
    with _MODELS_LOCK:
        _MODELS.clear()


# ---------------------------------------------------------------------------------------
# Shadow agreement (pure)


def same_argmax(live: FloatArray, shadow: FloatArray) -> npt.NDArray[np.bool_]:
    """Per row: True when both vectors name the same most likely class (first on ties)."""
    return np.asarray(np.argmax(live, axis=-1) == np.argmax(shadow, axis=-1))


def total_variation(live: FloatArray, shadow: FloatArray) -> FloatArray:
    """Per row: half the L1 distance of two probability vectors, in [0, 1]."""
    return np.asarray(0.5 * np.abs(np.asarray(live) - np.asarray(shadow)).sum(axis=-1))


def relative_difference(live: FloatArray, shadow: FloatArray) -> FloatArray:
    """Per element: ``|shadow - live| / |live|`` (inf where live is 0 and they differ)."""
    live, shadow = np.asarray(live, dtype=np.float64), np.asarray(shadow, dtype=np.float64)
    diff = np.abs(shadow - live)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(diff == 0.0, 0.0, diff / np.abs(live))


@dataclass
class ShadowModels:
    """The candidate model set's sessions and ensemble (never part of the state)."""

    regime: LoadedModel | None = None
    vol: LoadedModel | None = None
    ensemble: VolEnsemble | None = None
    prior: FloatArray = field(default_factory=lambda: np.full(len(REGIMES), 1.0 / len(REGIMES)))


# ---------------------------------------------------------------------------------------
# State


@dataclass
class Track:
    """One instrument as the market step sees it."""

    queue: deque[Mark] = field(default_factory=deque)
    """Marks received but not yet applied (no complete bar at or after them processed)."""
    last: Mark | None = None
    """Newest applied mark."""
    seen: int = -1
    """ts_event of the newest mark received."""
    cursor: int = -1
    """Newest bar end this instrument has been forecast at (or passed)."""
    history: LogVolHistory | None = None
    garch: GarchVariance | None = None

    def advance(self, ts: int) -> None:
        """Apply the queued marks at or before ``ts``, in order."""
        while self.queue and self.queue[0].ts_event <= ts:
            mark = self.queue.popleft()
            if self.history is not None:
                self.history.update(mark.log_return)
            if self.garch is not None:
                self.garch.update(mark.log_return)
            self.last = mark


@dataclass
class MarketState:
    """Everything the market step keeps; pickles for recovery (no ONNX sessions)."""

    window: RegimeWindow = field(default_factory=lambda: RegimeWindow(ENCODER_LENGTH))
    """Features and causal labels of the last ENCODER_LENGTH bars (labeler state inside)."""
    tracks: dict[str, Track] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)
    """Candidate bar ends not yet complete, sorted."""
    last_bar: int = -1
    """Newest bar end processed."""
    bars: list[tuple[int, tuple[float, ...]]] = field(default_factory=list)
    """The last ``bar_retention`` processed bars: (end, regime probabilities or ())."""
    dropped_upto: int = -1
    """Newest bar end dropped from ``bars``."""
    psi: PsiMonitor | None = None
    """Drift of the vol model's inputs against its training reference."""
    psi_sha256: str = ""
    """Artifact the PSI reference belongs to."""
    model_status: dict[str, str] = field(default_factory=dict)
    """By model name: ``ok``, ``unavailable`` or ``inference_failed`` (the last call)."""
    model_errors: dict[str, str] = field(default_factory=dict)
    """By model name: the last failure's message."""
    counts: dict[str, int] = field(default_factory=dict)
    """``missing_input``, ``invalid_bar``, ``forced_bars``, ``vol_bars_lost``,
    ``out_of_order_marks``."""

    def count(self, what: str, n: int = 1) -> None:
        """Add ``n`` to counter ``what``."""
        self.counts[what] = self.counts.get(what, 0) + n


@dataclass
class _Bar:
    """A bar completed in the current batch."""

    ts: int
    status: str
    window: int = -1
    """Row of the regime batch, -1 without a window."""
    probabilities: tuple[float, ...] = ()


@dataclass
class _Row:
    """One instrument's vol-model input at one bar end."""

    ts: int
    instrument_id: str
    history: npt.NDArray[np.float32]
    ewma_var: float
    garch_var: float
    bar: _Bar | None
    """The bar of this batch it belongs to (None: an earlier one)."""
    probabilities: tuple[float, ...] = ()


# ---------------------------------------------------------------------------------------
# The logic


class MarketLogic(StatefulBatchLogic[Mark, MarketOut, bytes]):
    """Market bars, regime probabilities and vol forecasts from broadcast marks."""

    def __init__(self, config: MarketConfig, state: bytes | MarketState | None) -> None:
        self.config = config
        self.state = thaw(state, MarketState) if state is not None else MarketState()
        if isinstance(self.state.window, FeatureWindow):  # a snapshot from before labels
            self.state.window = RegimeWindow.from_feature_window(self.state.window)
        self.bar_ids = config.bar_ids
        self.regime: LoadedModel | None = None
        self.vol: LoadedModel | None = None
        self.ensemble: VolEnsemble | None = None
        self.prior: FloatArray = np.full(len(REGIMES), 1.0 / len(REGIMES))
        self._reached: list[tuple[int, str]] = []
        """(bar end, instrument) of this batch's rows, forecast or not."""
        self._load_models()
        self.shadow = self._load_shadow() if config.shadow_artifacts is not None else None

    # -- models --------------------------------------------------------------------------

    def _load_models(self) -> None:
        cfg, st = self.config, self.state
        regime = cached_model(cfg.regime_model, cfg.manifest_path, cfg.artifacts)
        if isinstance(regime, str):
            self._failed(cfg.regime_model, UNAVAILABLE, regime, count=False)
        else:
            try:
                labeler = labeler_from_extra(regime.entry.extra) if reads_labels(regime) else None
            except Exception as exc:  # a manifest entry this code cannot use
                self._failed(cfg.regime_model, UNAVAILABLE, f"market: {cfg.regime_model}: {exc!r}")
            else:
                st.window.use_labeler(labeler)
                self.regime = regime
                st.model_status[cfg.regime_model] = OK
        vol = cached_model(cfg.vol_model, cfg.manifest_path, cfg.artifacts)
        if isinstance(vol, str):
            self._failed(cfg.vol_model, UNAVAILABLE, vol, count=False)
            return
        try:
            extra = vol.entry.extra
            ensemble = VolEnsemble.from_extra(extra)
            ensemble.quantile(cfg.coverage)  # the coverage must be one the manifest stores
            prior = extra["ensemble"].get("prior")
            if prior is not None:
                self.prior = np.array([float(prior[r.value]) for r in REGIMES])
            if st.psi is None or st.psi_sha256 != vol.entry.sha256:  # new model: new reference
                st.psi = PsiMonitor.from_extra(extra, decay=1.0 - 1.0 / cfg.psi_window)
                st.psi_sha256 = vol.entry.sha256
        except Exception as exc:  # a manifest entry this code cannot use
            self._failed(cfg.vol_model, UNAVAILABLE, f"market: {cfg.vol_model}: {exc!r}")
            return
        self.vol, self.ensemble = vol, ensemble
        st.model_status[cfg.vol_model] = OK

    def _load_shadow(self) -> ShadowModels:
        """The candidate set; a model it cannot use is counted and left out."""
        cfg = self.config
        assert cfg.shadow_artifacts is not None
        manifest, artifacts = cfg.shadow_manifest_path, cfg.shadow_artifacts
        shadow = ShadowModels()
        regime = cached_model(cfg.regime_model, manifest, artifacts, SHADOW)
        shadow.regime = None if isinstance(regime, str) else regime
        vol = cached_model(cfg.vol_model, manifest, artifacts, SHADOW)
        if isinstance(vol, str) or self.ensemble is None:
            return shadow
        try:
            ensemble = VolEnsemble.from_extra(vol.entry.extra)
            ensemble.quantile(cfg.coverage)
            if (ensemble.length, ensemble.h) != (self.ensemble.length, self.ensemble.h):
                raise ValueError("its history length or horizon differs from the live model's")
            prior = vol.entry.extra["ensemble"].get("prior")
            if prior is not None:
                shadow.prior = np.array([float(prior[r.value]) for r in REGIMES])
        except Exception:  # a candidate this code cannot compare
            metrics.SHADOW_FAILURES.labels(model=cfg.vol_model).inc()
            return shadow
        shadow.vol, shadow.ensemble = vol, ensemble
        return shadow

    def _failed(self, model: str, status: str, message: str, count: bool = True) -> None:
        self.state.model_status[model] = status
        self.state.model_errors[model] = message
        if count:
            metrics.MODEL_LOAD_FAILURES.labels(model=model).inc()

    # -- input ---------------------------------------------------------------------------

    def on_batch(self, values: list[Mark]) -> tuple[Iterable[MarketOut], bool]:
        touched: set[str] = set()
        for mark in values:
            if isinstance(mark, Mark):
                self._receive(mark, touched)
        return self._step(touched), StatefulBatchLogic.RETAIN

    def _receive(self, mark: Mark, touched: set[str]) -> None:
        st = self.state
        iid, ts = mark.instrument_id, mark.ts_event
        track = st.tracks.get(iid)
        if track is None:
            track = st.tracks[iid] = Track(cursor=ts - 1)
        if ts <= track.seen:
            st.count("out_of_order_marks")
            return
        ens = self.ensemble
        if ens is not None and (
            track.history is None or (track.history.length, track.history.h) != (ens.length, ens.h)
        ):
            track.history, track.garch = ens.history_state(), ens.garch_state()
        track.queue.append(mark)
        track.seen = ts
        touched.add(iid)
        if iid in self.bar_ids and ts > st.last_bar:
            i = bisect.bisect_left(st.pending, ts)
            if i == len(st.pending) or st.pending[i] != ts:
                st.pending.insert(i, ts)

    # -- one batch -----------------------------------------------------------------------

    def _step(self, touched: set[str]) -> list[MarketOut]:
        st = self.state
        rows: list[_Row] = []
        for iid in sorted(touched):  # instruments catching up with bars done before
            self._catch_up(iid, rows)
        bars: list[_Bar] = []
        windows: list[tuple[FloatArray, npt.NDArray[np.int64]]] = []
        order = sorted(st.tracks)
        for end in self._complete_ends():
            bar = self._build_bar(end, windows)
            bars.append(bar)
            for iid in order:
                track = st.tracks[iid]
                if track.cursor < end <= track.seen:
                    self._add_row(iid, track, end, bar, rows)
        self._infer_regimes(bars, windows)
        out: list[tuple[int, int, str, MarketOut]] = []
        for bar in bars:
            out.extend((bar.ts, 0, "", item) for item in self._regime_outputs(bar))
            self._retain(bar)
        forecasts = self._forecast(rows)
        made = {(f.ts_event, f.instrument_id) for f in forecasts}
        forecasts += [no_forecast(i, end) for end, i in self._reached if (end, i) not in made]
        self._reached = []
        out.extend((f.ts_event, 1, f.instrument_id, f) for f in forecasts)
        out.sort(key=lambda o: o[:3])
        return [o[3] for o in out]

    def _complete_ends(self) -> list[int]:
        """Pending bar ends every bar instrument has reached (plus forced ones), in order."""
        st = self.state
        tracks = st.tracks
        frontier = min((tracks[i].seen if i in tracks else -1) for i in self.bar_ids)
        n = bisect.bisect_right(st.pending, frontier)
        forced = max(0, len(st.pending) - n - self.config.max_pending_bars)
        if forced:
            st.count("forced_bars", forced)
        ends = st.pending[: n + forced]
        del st.pending[: n + forced]
        if ends:
            st.last_bar = ends[-1]
        return ends

    def _build_bar(self, end: int, windows: list[tuple[FloatArray, npt.NDArray[np.int64]]]) -> _Bar:
        st = self.state
        for iid in self.bar_ids:
            if iid in st.tracks:
                st.tracks[iid].advance(end)
        values = self._bar_values(end)
        if values is None:
            st.count(MISSING_INPUT)
            return _Bar(end, MISSING_INPUT)
        try:
            window = st.window.update(values)
        except MarketFeatureError:
            st.count(INVALID_BAR)
            return _Bar(end, INVALID_BAR)
        if window is None:
            return _Bar(end, WARMING_UP)
        windows.append(window)
        return _Bar(end, OK, len(windows) - 1)

    def _bar_values(self, end: int) -> dict[str, float] | None:
        """The market bar at ``end`` from each bar instrument's last mark at or before it."""
        cfg, tracks = self.config, self.state.tracks
        last = {iid: t.last for iid in self.bar_ids if (t := tracks.get(iid)) is not None}
        if any(last.get(iid) is None for iid in self.bar_ids):
            return None
        index, rate, credit = (last[cfg.index_id], last[cfg.rate_id], last[cfg.credit_id])
        assert index is not None and rate is not None and credit is not None
        spread, volume = index.spread_bps, index.volume
        if cfg.breadth_ids:
            breadth = [m for iid in cfg.breadth_ids if (m := last[iid]) is not None]
            spreads = [m.spread_bps for m in breadth if math.isfinite(m.spread_bps)]
            spread = math.fsum(spreads) / len(spreads) if spreads else math.nan
            volume = math.fsum(m.volume for m in breadth if m.ts_event == end)  # none if skipped
        return {
            "index_close": index.price,
            "rate": rate.bar_yield,
            "credit_spread": credit.bar_yield - rate.bar_yield,
            "spread_bps": spread,
            "volume": volume,
        }

    # -- regime --------------------------------------------------------------------------

    def _infer_regimes(
        self, bars: list[_Bar], windows: list[tuple[FloatArray, npt.NDArray[np.int64]]]
    ) -> None:
        """One ``predict_proba`` call for every window (features and labels) of the batch."""
        if not windows:
            return
        name = self.config.regime_model
        if self.regime is None:
            status = UNAVAILABLE
        else:
            started = time.perf_counter()
            batch = np.stack([w for w, _ in windows])
            labels = np.stack([lab for _, lab in windows])
            try:
                proba = predict_proba(self.regime, batch, labels)
                if proba.shape != (len(windows), len(REGIMES)) or not np.isfinite(proba).all():
                    raise ValueError(f"{name}: bad output of shape {proba.shape}")
            except Exception as exc:  # inference must never stop the flow
                self._failed(name, INFERENCE_FAILED, f"market: {name} inference: {exc!r}")
                status = INFERENCE_FAILED
            else:
                metrics.MODEL_INFERENCE.labels(model=name).observe(time.perf_counter() - started)
                self.state.model_status[name] = OK
                for bar in bars:
                    if bar.window >= 0:
                        bar.probabilities = tuple(proba[bar.window].tolist())
                newest = proba[-1]
                for regime, p in zip(REGIMES, newest.tolist(), strict=True):
                    metrics.REGIME_PROBABILITY.labels(regime=regime.value).set(p)
                self._shadow_regimes(batch, labels, proba)
                return
        for bar in bars:
            if bar.window >= 0:
                bar.status = status

    def _shadow_regimes(
        self, batch: FloatArray, labels: npt.NDArray[np.int64], live: FloatArray
    ) -> None:
        """Agreement of the shadow regime model with the live one on the same windows.

        The shadow reads the live labeler's labels (a candidate shipping another labeler
        is compared on the live one's labels; one that reads no labels ignores them).
        """
        model = self.shadow.regime if self.shadow is not None else None
        if model is None:
            return
        name = self.config.regime_model
        try:
            proba = predict_proba(model, batch, labels)
            if proba.shape != live.shape or not np.isfinite(proba).all():
                raise ValueError(f"{name} (shadow): bad output of shape {proba.shape}")
        except Exception:  # the shadow must never disturb the live path
            metrics.SHADOW_FAILURES.labels(model=name).inc()
            return
        agree = int(same_argmax(live, proba).sum())
        metrics.SHADOW_REGIME_AGREEMENT.labels(outcome="agree").inc(agree)
        metrics.SHADOW_REGIME_AGREEMENT.labels(outcome="disagree").inc(len(live) - agree)
        for distance in total_variation(live, proba).tolist():
            metrics.SHADOW_REGIME_DISTANCE.observe(distance)

    def _regime_outputs(self, bar: _Bar) -> list[MarketOut]:
        version = self.regime.entry.version if self.regime is not None else ""
        if not bar.probabilities:
            return [RegimeUpdate(bar.ts, (), "", version, bar.status)]
        summary = regime_summary(bar.probabilities)
        record: Record = {
            "scope": self.config.scope,
            "ts_event": bar.ts,
            "probabilities": [
                {"regime": r.value, "probability": p}
                for r, p in zip(REGIMES, bar.probabilities, strict=True)
            ],
            "most_likely": summary.regime.value,
            "entropy": summary.entropy,
            "coarse": summary.coarse.value,
            "model_version": version,
            "ts_decided": time.time_ns(),
        }
        update = RegimeUpdate(bar.ts, bar.probabilities, summary.regime.value, version, OK)
        return [RegimeOut(record), update]

    def _retain(self, bar: _Bar) -> None:
        st = self.state
        st.bars.append((bar.ts, bar.probabilities))
        excess = len(st.bars) - self.config.bar_retention
        if excess > 0:
            st.dropped_upto = st.bars[excess - 1][0]
            del st.bars[:excess]

    # -- volatility ----------------------------------------------------------------------

    def _catch_up(self, iid: str, rows: list[_Row]) -> None:
        """Rows of an instrument at bars processed in earlier batches that it now reached."""
        st = self.state
        track = st.tracks[iid]
        if track.cursor < st.dropped_upto:
            st.count("vol_bars_lost")
            track.cursor = st.dropped_upto
        start = bisect.bisect_right(st.bars, track.cursor, key=lambda b: b[0])
        for end, probabilities in st.bars[start:]:
            if end > track.seen:
                break
            self._add_row(iid, track, end, None, rows, probabilities)

    def _add_row(
        self,
        iid: str,
        track: Track,
        end: int,
        bar: _Bar | None,
        rows: list[_Row],
        probabilities: tuple[float, ...] = (),
    ) -> None:
        track.advance(end)
        track.cursor = end
        self._reached.append((end, iid))
        if track.history is None or track.garch is None or track.last is None:
            return
        history = track.history.get()
        ewma_var = track.last.ewma_var
        garch_var = track.garch.mean_var(track.history.h)
        if history is None or not (math.isfinite(ewma_var) and ewma_var >= 0.0):
            return
        if not math.isfinite(garch_var):
            return
        rows.append(_Row(end, iid, history, ewma_var, garch_var, bar, probabilities))

    def _forecast(self, rows: list[_Row]) -> list[VolForecast]:
        """One N-BEATS call for every row of the batch, then the regime-weighted ensemble."""
        if not rows or self.vol is None or self.ensemble is None:
            return []
        name, entry = self.config.vol_model, self.vol.entry
        started = time.perf_counter()
        batch = np.stack([r.history for r in rows]).astype(np.float32, copy=False)
        try:
            raw = self.vol.run({entry.inputs[0].name: batch})[entry.outputs[0].name]
            nbeats = np.asarray(raw, dtype=np.float64).reshape(len(rows), -1)[:, 0]
            if not np.isfinite(nbeats).all():
                raise ValueError(f"{name}: non-finite forecasts")
        except Exception as exc:  # inference must never stop the flow
            self._failed(name, INFERENCE_FAILED, f"market: {name} inference: {exc!r}")
            return []
        metrics.MODEL_INFERENCE.labels(model=name).observe(time.perf_counter() - started)
        self.state.model_status[name] = OK
        ewma = np.array([r.ewma_var for r in rows])
        garch = np.array([r.garch_var for r in rows])
        out: list[VolForecast] = []
        live_vol = np.empty(len(rows))
        for idx, probs in self._groups(rows, self.prior):
            # one probability vector per group: each row's result is independent of the
            # other rows (a (B, 7) matmul rounds differently for B = 1 and B > 1)
            vol, lo, hi = self.ensemble.forecast_batch(
                nbeats[idx], ewma[idx], garch[idx], probs, self.config.coverage
            )
            live_vol[idx] = vol
            for j, i in enumerate(idx):
                r = rows[i]
                out.append(
                    VolForecast(
                        r.instrument_id,
                        r.ts,
                        float(vol[j]),
                        float(lo[j]),
                        float(hi[j]),
                        entry.version,
                        self.ensemble.sigma(float(vol[j])),
                    )
                )
        if self.state.psi is not None:
            last = np.array([float(r.history[-1]) for r in rows])
            self.state.psi.update(psi_inputs(last, ewma, garch))
            self.state.psi.export(metrics.MODEL_INPUT_PSI, name)
        self._shadow_vols(rows, batch, ewma, garch, live_vol)
        return out

    def _shadow_vols(
        self,
        rows: list[_Row],
        batch: npt.NDArray[np.float32],
        ewma: FloatArray,
        garch: FloatArray,
        live: FloatArray,
    ) -> None:
        """Relative difference of the shadow vol forecasts from the live ones, same rows."""
        shadow = self.shadow
        if shadow is None or shadow.vol is None or shadow.ensemble is None:
            return
        entry = shadow.vol.entry
        try:
            raw = shadow.vol.run({entry.inputs[0].name: batch})[entry.outputs[0].name]
            nbeats = np.asarray(raw, dtype=np.float64).reshape(len(rows), -1)[:, 0]
            vol = np.empty(len(rows))
            for idx, probs in self._groups(rows, shadow.prior):
                vol[idx] = shadow.ensemble.forecast_batch(
                    nbeats[idx], ewma[idx], garch[idx], probs, self.config.coverage
                )[0]
            if not np.isfinite(vol).all():
                raise ValueError(f"{entry.name} (shadow): non-finite forecasts")
        except Exception:  # the shadow must never disturb the live path
            metrics.SHADOW_FAILURES.labels(model=entry.name).inc()
            return
        for difference in relative_difference(live, vol).tolist():
            metrics.SHADOW_VOL_DIFFERENCE.observe(difference)

    def _groups(
        self, rows: Sequence[_Row], prior: FloatArray
    ) -> list[tuple[list[int], FloatArray]]:
        """Row indexes by bar end, with that bar's probabilities (the prior when unknown)."""
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r.ts, []).append(i)
        out = []
        for idx in groups.values():
            row = rows[idx[0]]
            probs = row.bar.probabilities if row.bar is not None else row.probabilities
            out.append((idx, np.asarray(probs, dtype=np.float64) if probs else prior))
        return out

    # -- the rest ------------------------------------------------------------------------

    def on_eof(self) -> tuple[Iterable[MarketOut], bool]:
        # Pending bars wait for the marks that prove them over, also across a restart:
        # closing them here would make the outputs depend on where a run was stopped.
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return freeze(self.state)


def regime_write(out: RegimeOut) -> StateWrite:
    """Redis write of the current regime: ``regime:<scope>``, guarded by event time."""
    r = out.record
    probabilities = {p["regime"]: p["probability"] for p in r["probabilities"]}
    return StateWrite(
        f"regime:{r['scope']}",
        r["ts_event"],
        {
            "most_likely": r["most_likely"],
            "coarse": r["coarse"],
            "entropy": repr(r["entropy"]),
            "probabilities": json.dumps(probabilities, sort_keys=True),
            "model_version": r["model_version"],
        },
    )
