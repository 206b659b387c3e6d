"""Procedural multi-camera scenes in MultiCamVideo's layout, with exact ground truth (see write.py).

    python -m track2view.synthetic --out DIR --scenes N --cameras K --size 96 --frames 81 --seed 0 --workers 2
"""

from track2view.synthetic.render import cast, render, visible, world_points
from track2view.synthetic.scene import random_scene, scene_cameras
from track2view.synthetic.generate import generate
from track2view.synthetic.write import is_complete, load_ground_truth, write_metadata, write_scene

__all__ = ["cast", "render", "visible", "world_points", "random_scene", "scene_cameras", "is_complete",
           "load_ground_truth", "write_metadata", "write_scene", "generate"]
