import numpy as np
import pytest

from track2view.trackers.queries import video_queries


def test_queries_half_first_half_last_frame_spread_over_the_image():
    q = video_queries(81, 1152, 480, 832)
    assert q.shape == (1152, 3) and q.dtype == np.float32
    assert (q[:576, 0] == 0).all() and (q[576:, 0] == 80).all()
    assert (q[:, 1:] > 0).all() and (q[:, 1:] < 1).all()
    for half in (q[:576], q[576:]):
        assert len(np.unique(half[:, 1:], axis=0)) == 576
        assert half[:, 1].min() < 0.05 and half[:, 1].max() > 0.95 and half[:, 2].min() < 0.05
    odd = video_queries(9, 7)
    assert (odd[:, 0] == 0).sum() == 4 and (odd[:, 0] == 8).sum() == 3
    with pytest.raises(ValueError, match="at least 2"):
        video_queries(9, 1)


def test_query_frame_schemes():
    from track2view.trackers.queries import source_query_frames

    first = video_queries(9, 10, query_frames="first")
    assert (first[:, 0] == 0).all()
    rand = video_queries(17, 400, query_frames="random", seed=3)
    assert len(set(rand[:, 0].tolist())) > 8 and rand[:, 0].min() >= 0 and rand[:, 0].max() <= 16
    np.testing.assert_array_equal(video_queries(9, 10), video_queries(9, 10, query_frames="first_last"))
    assert source_query_frames("first_last", 9, 10, np.random.default_rng(0)) == (0, 8)
    with pytest.raises(ValueError, match="unknown query frames 'last'"):
        video_queries(9, 10, query_frames="last")
