"""The `folder` source on folders as users have them: broken files, every image mode, the index, several processes."""

import faulthandler
import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import PartialState, debug_launcher
from PIL import Image

import genkit.data.folder
from genkit.data import IMAGE_SUFFIXES, DataConfig, build_dataset, checked_images, folder_index_path, load_rgb
from genkit.errors import GenkitError
from genkit.processes import process_state

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
ORIENTATION = 0x0112  # the EXIF tag
SAVED_GOOD = ["00.png", "photo.JPG", "gray.png", "transparent.png", "cmyk.tif", "white16.png"]
SAVED_BAD = ["cut.jpg", "empty.png", "notes.jpg", "random.png"]


pytestmark = pytest.mark.usefixtures("genkit_cache")


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random RGB image (compresses like a photo, so a cut JPEG loses real data)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)


def truncated_jpeg(path: Path) -> None:
    """A valid 64x48 JPEG at `path`, cut to its first half."""
    noise(64, 48).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def save_folder(root: Path) -> None:
    """Images of mixed sizes and modes in nested folders, named in SAVED_GOOD and SAVED_BAD.

    Sorted: 00.png (val), a/..., b/..., z/... (train), so every bad file (cut.jpg and z/*) is in train.
    """
    for folder in ("a/deep", "b", "z"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), BLUE).save(root / "00.png")
    noise(40, 30, 1).save(root / "a" / "deep" / "photo.JPG")
    Image.new("L", (30, 50), 200).save(root / "a" / "gray.png")
    Image.new("RGBA", (24, 24), (255, 0, 0, 0)).save(root / "a" / "transparent.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "b" / "cmyk.tif")
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(root / "b" / "white16.png")
    truncated_jpeg(root / "b" / "cut.jpg")
    (root / "z" / "empty.png").write_bytes(b"")
    (root / "z" / "notes.jpg").write_text("not an image")
    (root / "z" / "random.png").write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    (root / "z" / "readme.txt").write_text("not an image file name")


def constant(value: float, size: int) -> torch.Tensor:
    return torch.full((3, size, size), value)


def test_bad_files_are_skipped_with_one_warning_counting_them(tmp_path):
    save_folder(tmp_path)
    config = DataConfig(source="folder", path=str(tmp_path), image_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = build_dataset(config, "train")
    assert len(caught) == 1
    # The first bad file in sorted order is the truncated JPEG, and PIL's reason is quoted.
    assert f"skipped 4 unreadable image(s) of 9 in the train split of {tmp_path}; first {tmp_path}/b/cut.jpg" in str(
        caught[0].message
    )
    assert "truncated" in str(caught[0].message).lower()
    names = [path.name for path in train.paths]
    assert names == ["photo.JPG", "gray.png", "transparent.png", "cmyk.tif", "white16.png"]
    by_name = dict(zip(names, (train[index] for index in range(len(train))), strict=True))
    assert torch.allclose(by_name["gray.png"], constant(200 / 127.5 - 1, 8), atol=1e-6)
    assert torch.equal(by_name["transparent.png"], constant(1.0, 8))  # fully transparent -> white
    assert torch.allclose(by_name["cmyk.tif"], torch.tensor([1.0, -1, -1])[:, None, None].expand(3, 8, 8))
    assert torch.equal(by_name["white16.png"], constant(1.0, 8))  # 65535 -> 255, not clipped noise
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        val = build_dataset(config, "val")
    assert not caught and [path.name for path in val.paths] == ["00.png"]
    assert torch.allclose(val[0], torch.tensor([-1.0, -1, 1])[:, None, None].expand(3, 8, 8))


def test_strict_names_the_first_bad_file(tmp_path):
    save_folder(tmp_path)
    config = DataConfig(source="folder", path=str(tmp_path), strict=True)
    message = r"unreadable image .*b/cut\.jpg \(OSError: (?i:truncated).*remove or replace it.*data\.strict=false"
    with pytest.raises(GenkitError, match=message):
        build_dataset(config, "train")
    assert [path.name for path in build_dataset(config, "val").paths] == ["00.png"]


def test_a_files_split_is_its_sorted_position_whatever_is_corrupt(tmp_path):
    for index in range(41):
        Image.new("L", (4, 4), index).save(tmp_path / f"{index:02d}.png")
    for index in (0, 5, 39):
        (tmp_path / f"{index:02d}.png").write_bytes(b"broken")
    config = DataConfig(source="folder", path=str(tmp_path), image_size=4)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 3 in the val split"):
        val = build_dataset(config, "val")
    assert [path.name for path in val.paths] == ["20.png", "40.png"]
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\) of 38 in the train split"):
        train = build_dataset(config, "train")
    expected = [f"{index:02d}.png" for index in range(41) if index % 20 and index not in (5, 39)]
    assert [path.name for path in train.paths] == expected


def test_files_keep_the_order_of_sorted_paths(tmp_path):
    # Strings sort "a-b" before "a/b", path components the other way round; the split follows sorted(Path) as before.
    names = ["a-b.png", "a/b.png", "a.png", "a b.png", "..png", "A.png", "é.png", "a/c/d.png", "a/c.png", "b.JPEG"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (2, 2)).save(tmp_path / name, format="PNG")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    expected = sorted(path for path in tmp_path.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    assert list(checked_images(tmp_path, 2)) == expected and len(expected) == len(names) + 1


def save_single_pixels(path: Path, mode: str, pixels: list) -> None:
    image = Image.new(mode, (len(pixels), 1))
    for x, pixel in enumerate(pixels):
        image.putpixel((x, 0), pixel)
    image.save(path)


def row(path: Path) -> list[tuple[int, int, int]]:
    """The pixels of the one-row image file at `path` as load_rgb gives them."""
    image = load_rgb(path, 1)
    assert image.mode == "RGB"
    return [image.getpixel((x, 0)) for x in range(image.width)]


def test_alpha_is_composited_over_white(tmp_path):
    save_single_pixels(tmp_path / "rgba.png", "RGBA", [(255, 0, 0, 0), (255, 0, 0, 255), (255, 0, 0, 128)])
    # Half alpha: 255 * 128/255 of the colour plus 255 * (1 - 128/255) of white.
    assert row(tmp_path / "rgba.png") == [WHITE, RED, (255, 127, 127)]
    save_single_pixels(tmp_path / "la.png", "LA", [(100, 0), (100, 255), (0, 51)])
    assert row(tmp_path / "la.png") == [WHITE, (100, 100, 100), (204, 204, 204)]
    palette = Image.new("P", (2, 1))
    palette.putpalette([*RED, *BLUE])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette_transparent.png", transparency=1)
    assert row(tmp_path / "palette_transparent.png") == [RED, WHITE]
    palette.save(tmp_path / "palette.png")
    assert row(tmp_path / "palette.png") == [RED, BLUE]


def test_gray_cmyk_and_bilevel_become_rgb(tmp_path):
    save_single_pixels(tmp_path / "gray.png", "L", [0, 77, 255])
    assert row(tmp_path / "gray.png") == [(0, 0, 0), (77, 77, 77), WHITE]
    save_single_pixels(tmp_path / "cmyk.tif", "CMYK", [(0, 255, 255, 0), (0, 0, 0, 0), (0, 0, 0, 255)])
    assert row(tmp_path / "cmyk.tif") == [RED, WHITE, (0, 0, 0)]
    save_single_pixels(tmp_path / "bilevel.png", "1", [0, 1])
    assert row(tmp_path / "bilevel.png") == [(0, 0, 0), WHITE]


@pytest.mark.parametrize(
    ("name", "mode"), [("16.png", "I;16"), ("16.tif", "I;16"), ("16b.tif", "I;16B"), ("32.tif", "I")]
)
def test_sixteen_bit_gray_is_scaled_to_eight_bits(tmp_path, name, mode):
    values = np.array([[0, 257, 32896, 1000, 65535]], dtype=np.uint16)
    if mode == "I;16B":
        image = Image.frombytes(mode, (5, 1), values.astype(">u2").tobytes())
    else:
        image = Image.fromarray(values.astype(np.int32) if mode == "I" else values)
    image.save(tmp_path / name)
    assert Image.open(tmp_path / name).mode == mode
    # round(value / 257): 0 -> 0, 257 -> 1, 128 * 257 -> 128, 1000 -> 3.89 -> 4 (>> 8 would give 3), 65535 -> 255.
    assert row(tmp_path / name) == [(value, value, value) for value in (0, 1, 128, 4, 255)]


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize(("orientation", "red_corner"), [(1, "top left"), (6, "top right"), (8, "bottom left")])
def test_exif_orientation_is_applied(tmp_path, suffix, orientation, red_corner):
    # Stored 40 wide, 20 high, red in the top-left 10x10 corner; 6 and 8 display it rotated a quarter turn.
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 10, 10))
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.save(tmp_path / f"photo{suffix}", exif=exif, quality=95)
    shown = load_rgb(tmp_path / f"photo{suffix}", 16)
    assert shown.size == ((40, 20) if orientation == 1 else (20, 40))
    corners = {"top left": (4, 4), "top right": (shown.width - 5, 4), "bottom left": (4, shown.height - 5)}
    for corner, xy in corners.items():
        expected = RED if corner == red_corner else BLUE
        assert np.abs(np.subtract(shown.getpixel(xy), expected)).max() <= 8, (corner, shown.getpixel(xy))


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_no_smaller_than_image_size(tmp_path):
    Image.new("RGB", (1000, 700), (10, 200, 30)).save(tmp_path / "large.jpg", quality=95)
    assert load_rgb(tmp_path / "large.jpg", 64).size == (125, 88)  # 1/8: the shorter side stays >= 64
    assert load_rgb(tmp_path / "large.jpg", 100).size == (250, 175)  # 1/4
    assert load_rgb(tmp_path / "large.jpg", 700).size == (1000, 700)
    item = build_dataset(DataConfig(source="folder", path=str(tmp_path), image_size=64), "val")[0]
    assert torch.allclose(item, torch.tensor([10, 200, 30])[:, None, None] / 127.5 - 1, atol=0.02)


def test_a_random_resized_crop_takes_its_part_from_the_whole_image(tmp_path):
    image = Image.new("RGB", (48, 24), BLUE)
    image.paste(RED, (0, 0, 8, 24))  # the left edge, outside the centre square
    image.save(tmp_path / "00.png")
    image.save(tmp_path / "01.png")
    config = DataConfig(source="folder", path=str(tmp_path), image_size=8)
    blue = torch.tensor([-1.0, -1, 1])[:, None, None].expand(3, 8, 8)
    assert torch.equal(build_dataset(config, "train")[0], blue)
    cropping = build_dataset(replace(config, random_resized_crop=True, crop_scale=[0.2, 0.4]), "train")
    torch.manual_seed(0)
    draws = [cropping[0] for _ in range(16)]
    assert any((draw[0] > 0).any() for draw in draws)  # some part reaches the red edge


class CountingCheck:
    """Stands in for genkit.data.folder._unreadable and records the files it is asked about."""

    def __init__(self):
        self.original, self.names = genkit.data.folder._unreadable, []

    def __call__(self, path: Path, size: int) -> str | None:
        self.names.append(path.name)
        return self.original(path, size)


@pytest.fixture
def counting(monkeypatch) -> CountingCheck:
    check = CountingCheck()
    monkeypatch.setattr(genkit.data.folder, "_unreadable", check)
    return check


def test_the_index_spares_a_second_start_and_rechecks_changed_files(tmp_path, genkit_cache, counting):
    save_folder(tmp_path)
    config = DataConfig(source="folder", path=str(tmp_path), image_size=8)
    with pytest.warns(UserWarning, match="skipped 4"):
        build_dataset(config, "train")
    assert sorted(counting.names) == sorted(SAVED_GOOD + SAVED_BAD)  # every file once, of both splits
    index_path = folder_index_path(tmp_path)
    assert index_path.parent.parent == genkit_cache and index_path == folder_index_path(tmp_path / "a" / "..")
    entries, cut = json.loads(index_path.read_text())["files"], (tmp_path / "b" / "cut.jpg").stat()
    assert entries["b/cut.jpg"][:2] == [cut.st_size, cut.st_mtime_ns]
    assert entries["b/cut.jpg"][2].startswith("OSError") and entries["a/gray.png"][2] is None

    counting.names.clear()
    build_dataset(config, "val")
    with pytest.warns(UserWarning, match="skipped 4"):
        build_dataset(config, "train")
    assert counting.names == []

    noise(64, 48).save(tmp_path / "b" / "cut.jpg")  # repaired: a new size and mtime
    gray = tmp_path / "a" / "gray.png"
    os.utime(gray, ns=(gray.stat().st_atime_ns, gray.stat().st_mtime_ns + 10**9))  # touched only
    Image.new("RGB", (9, 9), RED).save(tmp_path / "z" / "new.png")
    (tmp_path / "z" / "empty.png").unlink()
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\) of 9 .*notes\.jpg"):
        train = build_dataset(config, "train")
    assert sorted(counting.names) == ["cut.jpg", "gray.png", "new.png"]
    assert "cut.jpg" in [path.name for path in train.paths]
    assert set(json.loads(index_path.read_text())["files"]) == {
        "00.png", "a/deep/photo.JPG", "a/gray.png", "a/transparent.png", "b/cmyk.tif", "b/cut.jpg",
        "b/white16.png", "z/new.png", "z/notes.jpg", "z/random.png",
    }  # fmt: skip


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", '{"version": 0, "files": {}}', '{"version": 1, "files": {"00.png": [1]}}', "\xff\xfe"],
)
def test_a_corrupt_index_is_rebuilt(tmp_path, counting, content):
    for index in range(3):
        Image.new("L", (4, 4), index).save(tmp_path / f"{index:02d}.png")
    config = DataConfig(source="folder", path=str(tmp_path), image_size=4)
    folder_index_path(tmp_path).parent.mkdir(parents=True)
    folder_index_path(tmp_path).write_text(content, encoding="latin-1")
    assert len(build_dataset(config, "train")) == 2
    assert sorted(counting.names) == ["00.png", "01.png", "02.png"]
    index = json.loads(folder_index_path(tmp_path).read_text())
    assert index["version"] == genkit.data.folder.INDEX_VERSION and set(index["files"]) == {
        "00.png",
        "01.png",
        "02.png",
    }


def test_an_unwritable_cache_is_a_warning_not_a_crash(tmp_path, monkeypatch):
    (tmp_path / "images").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "images" / "0.png")
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("GENKIT_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="could not write the image index .*GENKIT_CACHE"):
        assert len(build_dataset(DataConfig(source="folder", path=str(tmp_path / "images")), "val")) == 1


def build_on_rank(root: str, out: str) -> None:
    """debug_launcher target: build both splits on this rank, record what it decoded, got and warned in out/<rank>."""
    faulthandler.dump_traceback_later(60, exit=True)  # a hung collective fails the test instead of the suite
    PartialState._reset_state()  # the fork inherits the parent's single-process state; join the launched group
    state = process_state()
    check = CountingCheck()
    genkit.data.folder._unreadable = check  # this forked rank only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = DataConfig(source="folder", path=root, image_size=4)
        train, val = build_dataset(config, "train"), build_dataset(config, "val")
    record = {
        "world": state.num_processes,
        "decoded": check.names,
        "train": [str(path) for path in train.paths],
        "val": [str(path) for path in val.paths],
        "warnings": [str(warning.message) for warning in caught],
    }
    Path(out, str(state.process_index)).write_text(json.dumps(record))


def test_two_processes_split_the_check_and_agree(tmp_path):
    root, out = tmp_path / "images", tmp_path / "out"
    root.mkdir()
    out.mkdir()
    for index in range(21):
        Image.new("L", (4, 4), index).save(root / f"{index:02d}.png")
    (root / "07.png").write_bytes(b"")
    debug_launcher(build_on_rank, args=(str(root), str(out)), num_processes=2)
    ranks = [json.loads((out / str(rank)).read_text()) for rank in range(2)]
    assert [rank["world"] for rank in ranks] == [2, 2]
    first, second = (set(rank["decoded"]) for rank in ranks)
    assert not first & second and first | second == {f"{index:02d}.png" for index in range(21)}
    assert {len(first), len(second)} == {10, 11}  # each its share, once: the val split reused the gathered result
    assert ranks[0]["train"] == ranks[1]["train"] and ranks[0]["val"] == ranks[1]["val"]
    assert len(ranks[0]["train"]) == 18 and [Path(path).name for path in ranks[0]["val"]] == ["00.png", "20.png"]
    assert len(ranks[0]["warnings"]) == 1 and "07.png" in ranks[0]["warnings"][0] and ranks[1]["warnings"] == []
