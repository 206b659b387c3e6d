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
