"""ranking.calibration: Platt and bias calibration, sigmoid and logit."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.calibration import fit_calibration, logit, sigmoid


def test_platt_calibration_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    z = rng.normal(-3.0, 1.5, 200_000)
    y = (rng.random(z.size) < 1.0 / (1.0 + np.exp(-(0.7 * z + 0.3)))).astype(float)
    a, b = fit_calibration(z, y)
    assert a == pytest.approx(0.7, abs=0.03) and b == pytest.approx(0.3, abs=0.1)
    a, b = fit_calibration(z, y, "bias")
    p = 1.0 / (1.0 + np.exp(-(z + b)))
    assert a == 1.0 and p.sum() == pytest.approx(y.sum(), rel=1e-6)
    assert fit_calibration(-z, y)[0] > 0  # an anti-correlated score is never flipped


def test_sigmoid_and_logit_are_inverse_and_overflow_free():
    x = np.array([-800.0, -3.0, 0.0, 2.5, 800.0])
    with np.errstate(over="raise"):  # no overflow warning at the extremes
        p = sigmoid(x)
    np.testing.assert_allclose(p[1:4], 1.0 / (1.0 + np.exp(-x[1:4])))
    assert p[0] == 0.0 and p[-1] == 1.0
    np.testing.assert_allclose(logit(sigmoid(x[1:4])), x[1:4])
    assert np.isfinite(logit(np.array([0.0, 1.0]))).all()  # clipped, not infinite
