"""Inference: video -> tracks -> target cameras -> conditioning inputs -> pipeline -> files.

trajectories.py (target camera paths), reprojection.py (tracks of the source into the target cameras),
pipeline.py (`Track2ViewPipeline`), visualize.py (side-by-side and overlay frames), rerender.py (the routine
behind infer.py), outputs.py (the files it writes), parallel.py (one video over several GPUs: context
parallelism under torchrun). Speed and memory options (docs/inference.md): speed.py (what infer.py takes),
step_cache.py (diffusers' step caches), guidance.py (CFG on an interval of the steps), memory.py (VAE tiling, CPU
offload)."""
