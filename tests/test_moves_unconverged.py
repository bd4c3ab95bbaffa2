"""The moves build their subsample only from a run they may move: a run stopped by max_iter costs nothing."""

import pytest

from emface import FaceEM, make_faces, moves
from emface import executor as ex_mod
from emface.em import EMRun
from emface.model import FaceMixture


class _NoSubsample:
    """An executor stand-in whose subsample must not be asked for."""

    n_images = 10
    image_shape = (12, 14)

    def subsample(self, *a, **kw):
        raise AssertionError("a subsample was built for a run that cannot move")


@pytest.mark.parametrize("move", [moves.shift_escape, moves.split_merge])
def test_a_run_that_did_not_converge_builds_no_subsample(move):
    run = EMRun(params=None, objective=-1.0, objectives=[-2.0, -1.0], n_iter=1, converged=False)
    model = FaceMixture((4, 5), n_faces=2)
    assert move(_NoSubsample(), model, run, resume=None) is run


def test_a_fit_stopped_by_max_iter_builds_no_subsample(monkeypatch):
    X, _ = make_faces(40, (16, 18), (6, 5), n_faces=2, random_state=0)
    calls = []
    real = ex_mod.BaseExecutor.subsample

    def counting(self, *a, **kw):
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(ex_mod.BaseExecutor, "subsample", counting)
    FaceEM((6, 5), n_faces=2, max_iter=2, tol=0.0, n_init=1, random_state=0).fit(X)
    assert calls == []
    # a converged fit still tries its moves
    FaceEM((6, 5), n_faces=2, max_iter=200, n_init=1, random_state=0).fit(X)
    assert len(calls) >= 2
