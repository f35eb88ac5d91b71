"""Shared data and helpers for the kernel tests: real S&P 500 data from arch, tick factories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

N_ROWS = 3000  # a few thousand daily bars keep the whole folder fast


@pytest.fixture(scope="session")
def sp500() -> pd.DataFrame:
    """Daily S&P 500 OHLCV 1999-2010 shipped inside arch (works offline)."""
    import arch.data.sp500

    return arch.data.sp500.load().iloc[:N_ROWS].astype(float)


@pytest.fixture(scope="session")
def closes(sp500: pd.DataFrame) -> np.ndarray:
    return sp500["Close"].to_numpy()


@pytest.fixture(scope="session")
def returns(closes: np.ndarray) -> np.ndarray:
    """Simple daily returns."""
    return closes[1:] / closes[:-1] - 1.0


@pytest.fixture(scope="session")
def log_returns(closes: np.ndarray) -> np.ndarray:
    return np.diff(np.log(closes))
