"""ReCamMaster's ten target trajectories at the magnitudes measured from its own camera file, as target cameras.

Magnitudes (final relative motion of ReCamMaster's `example_test_data/cameras/camera_extrinsics.json`, see
../shared/reference/datasets.md): pan 19.88 deg, tilt 9.94 deg, dolly 1.988 m, translate 0.994 m with the
camera turned to keep a point 4 m ahead centred (13.95 deg), arc 29.82 deg about a point 4 m ahead. Gradual
(constant speed from the source camera's frame-0 pose). The presets themselves are
`track2view.inference.trajectories`'s; this file only fixes the list, the order and the amounts.
"""

from __future__ import annotations

import numpy as np

from track2view.inference.trajectories import PRESETS, REFERENCE_DEPTH_M, make_trajectory

# (ReCamMaster id, our preset, amount in the preset's unit, aim)
RECAMMASTER_PRESETS = (
    (1, "pan_right", 19.88, False), (2, "pan_left", 19.88, False),
    (3, "tilt_up", 9.94, False), (4, "tilt_down", 9.94, False),
    (5, "dolly_in", 1.988, False), (6, "dolly_out", 1.988, False),
    (7, "translate_up", 0.994, True), (8, "translate_down", 0.994, True),
    (9, "arc_left", 29.82, False), (10, "arc_right", 29.82, False),
)


def preset_trajectory(position: int, num_frames: int) -> tuple[dict, np.ndarray]:
    """The `position`-th trajectory of the cycle: (record {id, name, amount, unit, aim}, c2w [T, 4, 4]) with the
    target camera relative to the source camera at frame 0, in metres."""
    rid, name, amount, aim = RECAMMASTER_PRESETS[position % len(RECAMMASTER_PRESETS)]
    motion = make_trajectory(name, num_frames, amount, "gradual", pivot_depth=REFERENCE_DEPTH_M,
                             units_per_metre=1.0, aim=aim).motion
    record = {"recammaster_id": rid, "name": name, "amount": amount, "unit": PRESETS[name].unit, "aim": aim}
    return record, motion
