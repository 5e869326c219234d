"""Pictures: an mp4 becomes a looping GIF of every n-th frame at the video's speed; a histogram of real returns."""

import imageio.v3 as iio
import numpy as np
import pytest

from worldmodels.viz import video_to_gif, write_video


def test_video_to_gif_keeps_every_nth_frame_resized(tmp_path):
    frames = [np.full((64, 96, 3), 8 * i, np.uint8) for i in range(10)]
    write_video(tmp_path / "v.mp4", frames, fps=30)
    assert video_to_gif(tmp_path / "v.mp4", tmp_path / "v.gif", every=3, scale=0.5) == 4  # frames 0, 3, 6, 9
    gif = iio.imread(tmp_path / "v.gif")
    assert gif.shape[:3] == (4, 32, 48)
    assert abs(int(gif[1].mean()) - 24) <= 4  # frame 3's grey level, through H.264 and the GIF palette
    with pytest.raises(ValueError, match="every must be >= 1"):
        video_to_gif(tmp_path / "v.mp4", tmp_path / "w.gif", every=0)


def test_plot_returns_writes_a_png_and_refuses_no_returns(tmp_path):
    from worldmodels.viz import plot_returns

    plot_returns(tmp_path / "r.png", np.array([700.0, 850.0, 910.0]), "agent", threshold=900.0, ci95=12.0)
    image = iio.imread(tmp_path / "r.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0
    with pytest.raises(ValueError, match="no returns"):
        plot_returns(tmp_path / "s.png", np.array([]), "agent")
    assert not (tmp_path / "s.png").exists()
