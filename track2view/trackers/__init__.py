"""3D point trackers behind one interface: `get_tracker(name, **options).track(video, queries, frame_sources)`."""

from track2view.trackers.base import (PointTracker, TrackingResult, available_trackers, get_tracker,
                                     parse_tracker_options)

__all__ = ["PointTracker", "TrackingResult", "available_trackers", "get_tracker", "parse_tracker_options"]
