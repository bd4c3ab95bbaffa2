"""n_init="auto" restarts only where a restart can help (issue 20)."""

import types
import warnings

import numpy as np

from emface import FaceEM
from emface.datasets import make_faces
from emface.em import EMRun
from emface.engine.records import Params
from emface.schedule import RestartRule


def test_low_snr_default_fit_makes_one_run():
    """At noise 6x the contrast the posteriors are split at the optimum itself: no restart (the old rule made 4)."""
    X, truth = make_faces(400, (32, 32), (10, 8), noise=6.0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FaceEM((10, 8), random_state=0).fit(X)
    assert np.mean(est.posterior_summary().probability) < 0.95  # the old rule's trigger
    assert len(est.runs_) == 1


def _rule(truth, X, noise_std, seen_maxp):
    """The rule's answer for a run whose images have mean max-probability `seen_maxp`, at θ = truth but s."""
    est = FaceEM(truth.face.shape)
    ex = est._make_executor(X, truth.face.shape)
    model = est._model(truth.face.shape, ex.source)
    p = ex.source.to_working(Params(truth.faces[:, None], truth.background[None], np.array([noise_std]),
                                    truth.prior[None]))
    run = EMRun(params=p, objective=0.0, objectives=[0.0], n_iter=1, converged=True,
                stats=types.SimpleNamespace(max_prob=np.full(len(X), seen_maxp)))
    return RestartRule(1, ex, model)([run])


def test_rule_restarts_a_fit_less_decisive_than_its_own_images():
    X, truth = make_faces(400, (32, 32), (10, 8), noise=1.0, random_state=0)
    # at s = the true noise the model's own images are decisive (max-probability ~1): 0.6 is a poor optimum
    assert _rule(truth, X, truth.noise_std, 0.6)
    # the same data read as decisive: nothing to gain
    assert not _rule(truth, X, truth.noise_std, 0.99)
    # at s = 8x the contrast the model's own images are split too (their mean max-probability far below 0.6)
    assert not _rule(truth, X, 8 * truth.contrast, 0.6)
