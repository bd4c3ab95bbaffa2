"""Bad input is refused at the boundary with a ValueError that says what was expected and given."""

import numpy as np
import pytest

from emface import FaceEM

pytestmark = pytest.mark.filterwarnings("ignore::emface.ConvergenceWarning")


@pytest.fixture
def X(rng):
    return rng.normal(size=(6, 10, 12))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels(X, bad):
    X[3, 2, 2] = bad
    with pytest.raises(ValueError, match=r"X must hold finite values only .*, but image 3 has 1 NaN or infinite"):
        FaceEM((3, 3)).fit(X)


@pytest.mark.parametrize("shape,what", [((10, 12), "2-D"), ((2, 3, 10, 12, 3), "5-D"), ((5,), "1-D")])
def test_not_three_or_four_dimensional(shape, what):
    with pytest.raises(ValueError, match=rf"X must be a 3-D or 4-D array of shape \(K, H, W\) or \(K, H, W, Ch\), "
                                         rf"got {what}"):
        FaceEM((3, 3)).fit(np.zeros(shape))


def test_five_dimensional_input_says_why():
    with pytest.raises(ValueError, match="a 5-D array is not an image stack"):
        FaceEM((3, 3)).fit(np.zeros((2, 3, 10, 12, 3)))


def test_many_channels_are_read_as_colour_with_a_warning(X):
    """A (1, K, H, W) stack is a legal 4-D array; the warning says how it is read and what to pass instead."""
    with pytest.warns(UserWarning, match=r"read as 1 image\(s\) of 6x10 pixels with 12 channels .* pass a 3-D"), \
            pytest.warns(UserWarning, match="covered by a face in every image"):  # one image: some pixels always are
        est = FaceEM((3, 3), max_iter=1).fit(X[None])
    assert est.face_.shape == (3, 3, 12)


def test_rgb_stacks_fit_without_a_channel_warning(X, recwarn):
    FaceEM((3, 3), max_iter=1).fit(np.stack([X] * 3, axis=-1))
    assert not [w for w in recwarn if "channels each" in str(w.message)]


@pytest.mark.parametrize("shape", [(0, 10, 12), (3, 0, 12), (3, 10, 0)])
def test_empty_stack(shape):
    with pytest.raises(ValueError, match="X must hold at least one image of at least one pixel"):
        FaceEM((3, 3)).fit(np.zeros(shape))


def test_non_numeric_dtype():
    with pytest.raises(ValueError, match="X must hold real numbers .* got dtype"):
        FaceEM((3, 3)).fit(np.full((2, 4, 4), "a"))
    with pytest.raises(ValueError, match="X must hold real numbers"):
        FaceEM((3, 3)).fit(np.zeros((2, 4, 4), dtype=complex))


@pytest.mark.parametrize("fs", [(11, 3), (3, 13), (11, 13)])
def test_face_larger_than_images(X, fs):
    with pytest.raises(ValueError, match=r"face_shape=.* does not fit in images of shape \(H, W\)=\(10, 12\)"):
        FaceEM(fs).fit(X)


@pytest.mark.parametrize("fs", [3, (3,), (3, 3, 3), (0, 3), (-1, 2), (2.5, 3), ("3", 3), (True, 3), "3x3", None])
def test_face_shape_not_a_pair_of_positive_ints(X, fs):
    with pytest.raises(ValueError, match="face_shape must be a pair of positive ints"):
        FaceEM(fs).fit(X)


@pytest.mark.parametrize("kw,msg", [
    (dict(prior_smoothing=-1.0), "prior_smoothing must be >= 0.0, got -1.0"),
    (dict(prior_smoothing=np.nan), "prior_smoothing must be a finite real number"),
    (dict(n_init=0), "n_init must be >= 1, got 0"),
    (dict(n_init=1.5), "n_init must be an int, got 1.5"),
    (dict(n_init="many"), "n_init must be an int"),
    (dict(max_iter=-1), "max_iter must be >= 0, got -1"),
    (dict(tol=-1e-3), "tol must be >= 0.0"),
    (dict(init="kmeans"), r"init must be one of \['auto', 'random'\], got 'kmeans'"),
    (dict(dtype=np.int32), "dtype must be None, numpy.float64 or numpy.float32"),
    (dict(device="tpu"), "device must be .cpu., .cuda. or .cuda:N., got .tpu."),
    (dict(n_jobs=0), "n_jobs must be a positive int, -1 or None"),
    (dict(backend="cuda-ish"), "backend must be one of"),
    (dict(n_faces=0), "n_faces must be >= 1, got 0"),
    (dict(noise="each"), r"noise must be one of \['shared', 'per_channel'\], got 'each'"),
    (dict(algorithm="online"), r"algorithm must be one of \['auto', 'batch', 'incremental'\]"),
    (dict(max_memory="lots"), "max_memory must be a number of bytes or a string like '2GB'"),
    (dict(noise_floor=0.0), "noise_floor must be > 0.0"),
])
def test_bad_settings(X, kw, msg):
    with pytest.raises(ValueError, match=msg):
        FaceEM((3, 3), **kw).fit(X)


@pytest.mark.parametrize("kw,msg", [
    (dict(face_init=np.zeros((4, 3))), r"face_init must have shape \(3, 3\), got \(4, 3\)"),
    (dict(background_init=np.zeros((10, 11))), r"background_init must have shape \(10, 12\), got \(10, 11\)"),
    (dict(prior_init=np.ones((8, 9))), r"prior_init must have shape \(8, 10\), got \(8, 9\)"),
    (dict(noise_std_init=0.0), "noise_std_init must be > 0.0, got 0.0"),
    (dict(noise_std_init=-2.0), "noise_std_init must be > 0.0"),
    (dict(face_init=np.full((3, 3), np.nan)), "face_init must hold finite values only"),
])
def test_initial_arrays_of_the_wrong_shape(X, kw, msg):
    with pytest.raises(ValueError, match=msg):
        FaceEM((3, 3), **kw).fit(X)


@pytest.mark.parametrize("kw,msg", [
    (dict(face_init=np.zeros((3, 3, 4))), r"face_init must have shape \(3, 3, 3\), got \(3, 3, 4\) \(the images have 3"),
    (dict(face_init=np.zeros((3, 3))), r"face_init must have shape \(3, 3, 3\), got \(3, 3\)"),
    (dict(background_init=np.zeros((10, 12))), r"background_init must have shape \(10, 12, 3\)"),
    (dict(noise_std_init=np.ones(2)), r"noise_std_init must have shape \(3,\)"),
    (dict(noise_std_init=np.array([1.0, 2.0, 3.0])), "holds one value per channel, but noise='shared'"),
])
def test_colour_initial_arrays_must_match_the_channels(rng, kw, msg):
    X = rng.normal(size=(6, 10, 12, 3))
    with pytest.raises(ValueError, match=msg):
        FaceEM((3, 3), **kw).fit(X)


def test_several_faces_need_initial_arrays_with_a_face_axis(X):
    with pytest.raises(ValueError, match=r"face_init must have shape \(2, 3, 3\), got \(3, 3\)"):
        FaceEM((3, 3), n_faces=2, face_init=np.zeros((3, 3))).fit(X)
    with pytest.raises(ValueError, match=r"prior_init must have shape \(2, 8, 10\), got \(8, 10\)"):
        FaceEM((3, 3), n_faces=2, prior_init=np.full((8, 10), 1 / 80)).fit(X)


def test_prior_init_negative_or_not_summing_to_one(X):
    A = np.full((8, 10), 1 / 80)
    A[0, 0] = -A[0, 0]
    with pytest.raises(ValueError, match="prior_init must be non-negative, got a minimum of"):
        FaceEM((3, 3), prior_init=A).fit(X)
    with pytest.raises(ValueError, match="prior_init must sum to 1, got a sum of 2"):
        FaceEM((3, 3), prior_init=np.full((8, 10), 2 / 80)).fit(X)


def test_predict_on_images_of_another_size(X):
    est = FaceEM((3, 3), max_iter=2, n_init=1).fit(X)
    with pytest.raises(ValueError, match=r"X has images of shape \(10, 13\), but this FaceEM was fitted on images of shape \(10, 12\)"):
        est.predict(np.zeros((2, 10, 13)))
    with pytest.raises(ValueError, match="X must be a 3-D or 4-D array"):
        est.predict_proba(np.zeros((10, 12)))
    with pytest.raises(ValueError, match=r"X has images of shape \(10, 12, 3\), but this FaceEM was fitted on "
                                         r"images of shape \(10, 12\)"):
        est.predict(np.zeros((2, 10, 12, 3)))


def test_nothing_is_lost_on_bad_input(X):
    """A refused fit leaves a fitted estimator as it was."""
    est = FaceEM((3, 3), max_iter=3, n_init=1).fit(X)
    face = est.face_.copy()
    before = est.predict(X)
    scores = est.score_samples(X)
    bad = X.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        est.fit(bad)
    assert np.array_equal(est.face_, face)
    assert np.array_equal(est.predict(X), before)
    assert np.array_equal(est.score_samples(X), scores)
