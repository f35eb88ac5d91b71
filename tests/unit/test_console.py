from dataflows.console import decision_line, drift_line


def test_drift_line_when_metrics_have_psi_reports_the_largest_with_its_reading():
    text = "\n".join(
        [
            "# HELP riskstream_model_input_psi PSI",
            'riskstream_model_input_psi{feature="ewma",model="vol_nbeats"} 0.04',
            'riskstream_model_input_psi{feature="garch",model="vol_nbeats"} 0.31',
        ]
    )
    line = drift_line(text)
    assert "0.310" in line and "significant" in line and 'feature="garch"' in line


def test_drift_line_when_nothing_measured_says_so():
    assert drift_line("riskstream_decisions_total 3.0") == "drift: not measured yet"


def test_decision_line_when_regime_known_shows_it_and_only_hard_reasons():
    record = {
        "ts_event": 0, "portfolio_id": "PF-1", "side": "BUY", "requested_quantity": 10.0,
        "instrument_id": "AAPL", "decision": "REDUCE", "allowed_quantity": 5.0, "score": 12.5,
        "band": "LOW", "trading_state": "ACTIVE", "regime": "CALM",
        "reasons": [
            {"code": "ADV_SHARE", "hard": True},
            {"code": "RISK_MODEL_WARMING", "hard": False},
        ],
    }  # fmt: skip
    line = decision_line(record)
    assert "CALM" in line and "ADV_SHARE" in line and "RISK_MODEL_WARMING" not in line
