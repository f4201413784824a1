"""Image I/O at the edges: conversions round trip, transparency becomes white, bad files are one line."""
import pytest
import torch
from PIL import Image

from data_utils.images import load_image, pil_to_tensor, tensor_to_pil
from utils.errors import UserError


def test_pil_tensor_round_trip():
    image = Image.new("RGB", (5, 3), (10, 200, 30))
    tensor = pil_to_tensor(image)
    assert tensor.shape == (3, 3, 5) and tensor.dtype == torch.float32
    assert tensor_to_pil(tensor).tobytes() == image.tobytes()


def test_transparent_pixels_load_as_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.getpixel((1, 1)) == (255, 255, 255)
    assert loaded.getpixel((0, 0)) == (255, 0, 0)


def test_bad_files_raise_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="image not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "bad.png")
