"""Benchmarks as data: RealCam-Vid's metadata (realcam.py) and our synthetic scenes (synthetic.py) -> manifests."""
