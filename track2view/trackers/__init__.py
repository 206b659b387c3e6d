"""3D point trackers behind one interface: `get_tracker(name, **options).track(video, queries, frame_sources)`."""

from track2view.trackers.base import (PointTracker, TrackingResult, available_trackers, get_tracker,
                                     parse_tracker_options)
from track2view.trackers.identity import QueryIdentityError, TrackerOutputError, check_query_identity

__all__ = ["PointTracker", "QueryIdentityError", "TrackerOutputError", "TrackingResult", "available_trackers",
           "check_query_identity", "get_tracker", "parse_tracker_options"]
