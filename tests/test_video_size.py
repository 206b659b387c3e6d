"""The one video-size rule (VAE stride x patch, 4k+1 frames) every entry point uses."""


def test_video_size_rule_is_one_function():
    from track2view.video_size import latent_frames, video_size_problem

    assert video_size_problem(480, 832, 81) is None and latent_frames(81) == 21 and latent_frames(25) == 7
    assert "height=470" in video_size_problem(470, 832, 81) and "multiple of 16" in video_size_problem(470, 832, 81)
    assert "--num-frames=80" in video_size_problem(480, 832, 80, names=("--height", "--width", "--num-frames"))
    assert video_size_problem(64, 64, 9, spatial_multiple=16) is None
