"""decode: one file -> RGB pixels, and the reasons a file is refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image
from test_data_corpus import noise_jpeg, png_claiming

from dogvae.data.decode import decode_file, load_photo, open_rgb, probe, to_square
from dogvae.errors import BadImage


def encoded(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def reason_for(source, **kwargs) -> str:
    with pytest.raises(BadImage) as caught:
        open_rgb(source, **kwargs)
    return caught.value.reason


def first_pixel(data: bytes) -> tuple[int, ...]:
    return open_rgb(data).getpixel((0, 0))


# --- refusals -------------------------------------------------------------------------------


def test_zero_byte_file_is_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert reason_for(path) == "empty_file"
    assert reason_for(b"") == "empty_file"


def test_jpeg_cut_in_half_is_truncated_with_and_without_draft(tmp_path):
    data = noise_jpeg()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert reason_for(path) == "truncated"
    with pytest.raises(BadImage) as caught:
        decode_file(path, 16)
    assert caught.value.reason == "truncated"
    assert caught.value.path == str(path)


def test_png_cut_in_half_is_truncated():
    data = encoded(
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)), "PNG"
    )
    assert reason_for(data[: len(data) // 2]) == "truncated"


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("a shopping list, not a dog\n")
    assert reason_for(path) == "not_an_image"


def test_decompression_bomb_header_is_refused_before_decoding():
    assert reason_for(png_claiming(50_000, 50_000)) == "too_many_pixels"


def test_image_over_max_pixels_is_refused_from_its_header():
    data = encoded(Image.new("RGB", (100, 60)), "PNG")
    with pytest.raises(BadImage, match="100x60 exceeds the limit of 5,000 pixels") as caught:
        open_rgb(data, max_pixels=5_000)
    assert caught.value.reason == "too_many_pixels"
    assert open_rgb(data, max_pixels=6_000).size == (100, 60)


def test_missing_file_is_unreadable(tmp_path):
    assert reason_for(tmp_path / "nowhere.jpg") == "unreadable"


def test_errors_carry_the_given_name():
    with pytest.raises(BadImage, match=r"^upload\.jpg: not_an_image"):
        open_rgb(b"hello", name="upload.jpg")


# --- modes -> RGB ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "value", "fmt", "expected"),
    [
        ("RGBA", (255, 0, 0, 0), "PNG", (255, 255, 255)),
        ("RGBA", (255, 0, 0, 255), "PNG", (255, 0, 0)),
        ("RGBA", (0, 0, 0, 128), "PNG", (127, 127, 127)),
        ("LA", (0, 0), "PNG", (255, 255, 255)),
        ("LA", (40, 255), "PNG", (40, 40, 40)),
        ("PA", (0, 0), "TIFF", (255, 255, 255)),
        ("L", 77, "PNG", (77, 77, 77)),
        ("1", 1, "PNG", (255, 255, 255)),
        ("1", 0, "TIFF", (0, 0, 0)),
        ("CMYK", (0, 255, 255, 0), "JPEG", (255, 0, 0)),
        ("CMYK", (0, 0, 0, 255), "TIFF", (0, 0, 0)),
        ("YCbCr", (128, 128, 128), "TIFF", (128, 128, 128)),
        ("I;16", 65535, "PNG", (255, 255, 255)),
        ("I;16", 32896, "PNG", (128, 128, 128)),
        ("I;16", 300, "PNG", (1, 1, 1)),
        ("I;16B", 65535, "TIFF", (255, 255, 255)),
        ("I", 65535, "TIFF", (255, 255, 255)),
        ("I", 200, "TIFF", (200, 200, 200)),
        ("F", 0.5, "TIFF", (128, 128, 128)),
        ("F", 100.0, "TIFF", (100, 100, 100)),
    ],
)
def test_every_mode_becomes_8_bit_rgb(mode, value, fmt, expected):
    img = open_rgb(encoded(Image.new(mode, (4, 4), value), fmt))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == pytest.approx(expected, abs=2)


def test_16_bit_grey_is_scaled_not_clipped():
    ramp = np.array([[0, 1000, 20000, 40000, 65535]], dtype=np.uint16)
    pixels = np.asarray(open_rgb(encoded(Image.fromarray(ramp), "PNG")))[0, :, 0]
    assert pixels.tolist() == [0, 4, 78, 156, 255]


def test_wide_integer_range_is_stretched():
    values = np.array([[-1000, 0, 1000]], dtype=np.int32)
    pixels = np.asarray(open_rgb(encoded(Image.fromarray(values, "I"), "TIFF")))[0, :, 0]
    assert pixels.tolist() == [0, 128, 255]


def test_palette_transparency_is_composited_on_white():
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 0, 0, 0, 255])
    img.putpixel((1, 0), 1)
    rgb = open_rgb(encoded(img, "PNG", transparency=0))
    assert [rgb.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (0, 0, 255)]


def test_transparent_gif_frame_is_composited_on_white():
    img = Image.new("P", (2, 1), 0)
    img.putpalette([10, 10, 10, 0, 200, 0])
    img.putpixel((1, 0), 1)
    rgb = open_rgb(encoded(img, "GIF", transparency=0))
    assert [rgb.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (0, 200, 0)]


# --- format, orientation, draft -------------------------------------------------------------


def test_format_is_read_from_content_not_extension(tmp_path):
    path = tmp_path / "labrador.jpeg"
    path.write_bytes(encoded(Image.new("RGB", (10, 8), (0, 120, 0)), "WEBP", lossless=True))
    assert open_rgb(path).getpixel((0, 0)) == (0, 120, 0)
    assert probe(path).format == "WEBP"


def test_exif_orientation_6_is_rotated_upright():
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img = open_rgb(encoded(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert img.size == (20, 40)
    top, bottom = np.asarray(img)[5, 10], np.asarray(img)[35, 10]
    assert top[0] > 200 and top[2] < 50  # the stored left edge is now on top
    assert bottom[2] > 200 and bottom[0] < 50
    facts = probe(encoded(stored, "JPEG", exif=exif.tobytes()))
    assert (facts.width, facts.height) == (20, 40)


def smooth_photo(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([128 + 100 * np.sin(6 * x), 128 + 100 * np.cos(5 * y), 255 * x * y], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def test_draft_decode_scales_in_the_decoder_and_stays_close_to_full_decode():
    data = encoded(smooth_photo(1600, 1200), "JPEG", quality=92)
    drafted = open_rgb(data, draft_size=64)
    assert drafted.size == (200, 150)  # 1/8 scale, short side still >= 64
    full = to_square(open_rgb(data), 64)
    fast = load_photo(data, 64)
    assert np.abs(full.astype(int) - fast.astype(int)).mean() < 2.0


def test_draft_keeps_the_short_side_at_least_the_target():
    data = encoded(smooth_photo(500, 375), "JPEG")
    assert min(open_rgb(data, draft_size=100).size) >= 100
    assert open_rgb(data, draft_size=100).size == (250, 188)


# --- to_square ------------------------------------------------------------------------------


def three_stripes() -> Image.Image:
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 255, 0), (100, 0, 200, 100))
    img.paste((0, 0, 255), (200, 0, 300, 100))
    return img


def test_center_crop_keeps_the_middle_square():
    square = to_square(three_stripes(), 30, "center")
    assert square.shape == (30, 30, 3) and square.dtype == np.uint8
    # the outermost columns may pick up a trace of the neighbouring stripes through the filter
    assert np.abs(square[:, 2:-2].astype(int) - (0, 255, 0)).max() <= 2


def test_squash_keeps_everything_at_the_wrong_aspect():
    square = to_square(three_stripes(), 30, "squash")
    assert square.shape == (30, 30, 3)
    assert tuple(square[15, 2]) == (255, 0, 0)
    assert tuple(square[15, 15]) == (0, 255, 0)
    assert tuple(square[15, 27]) == (0, 0, 255)


def test_to_square_upsamples_small_images():
    assert to_square(Image.new("RGB", (8, 6), (9, 9, 9)), 32).shape == (32, 32, 3)


def test_unknown_crop_is_a_value_error():
    with pytest.raises(ValueError, match="crop must be one of"):
        to_square(three_stripes(), 30, "zoom")


def test_to_square_refuses_non_rgb_images():
    with pytest.raises(ValueError, match="open_rgb"):
        to_square(Image.new("RGBA", (8, 8)), 8)


def test_load_photo_accepts_bytes_paths_and_open_files(tmp_path):
    data = encoded(Image.new("RGB", (30, 20), (10, 200, 30)), "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    with open(path, "rb") as f:
        from_file = load_photo(f, 16)
    for pixels in (
        load_photo(data, 16),
        load_photo(path, 16),
        load_photo(str(path), 16),
        from_file,
    ):
        assert pixels.shape == (16, 16, 3)
        assert tuple(pixels[8, 8]) == (10, 200, 30)


def test_seed_images_all_decode_including_the_webp_named_jpeg():
    folder = shared_path("seed-images")
    formats = {path.name: probe(path).format for path in sorted(folder.iterdir())}
    assert formats["labrador.jpeg"] == "WEBP"
    assert probe(folder / "caramelo.png").mode == "RGBA"
    for path in folder.iterdir():
        assert decode_file(path, 32).shape == (32, 32, 3)
