"""Checking a `folder` data source: the first scan (cold index) against a second start (warm index).

Generates --images small images (JPEG and PNG in nested folders, one in 500 broken) in a temporary folder, with the
index in a temporary GENKIT_CACHE; prints a table and writes runs/bench_data.json.
"""

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from genkit.compare.output import print_table, script_parser, wall_seconds, write_report
from genkit.data import DataConfig, build_dataset

BAD_EVERY = 500  # one file in BAD_EVERY is broken: a JPEG cut in half or emptied, alternately


def write_images(root: Path, count: int, size: int) -> int:
    """`count` images of `size` px (half JPEG, half PNG, 100 per folder) under `root`; returns how many are broken."""
    generator = np.random.default_rng(0)
    for index in range(count):
        folder = root / f"{index // 100:04d}"
        folder.mkdir(exist_ok=True)
        # Smooth noise: random enough to cost a real decode, smooth enough to compress like a photo.
        coarse = generator.integers(0, 256, (size // 8 + 1, size // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
        path = folder / f"{index:06d}.{'jpg' if index % 2 else 'png'}"  # BAD_EVERY - 1 is odd: broken ones are JPEGs
        image.save(path)
        if index % BAD_EVERY == BAD_EVERY - 1:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if index // BAD_EVERY % 2 else b"")
    return count // BAD_EVERY  # the indices BAD_EVERY - 1, 2 BAD_EVERY - 1, ... below count


if __name__ == "__main__":
    parser = script_parser(__doc__)
    parser.add_argument("--images", type=int, default=10000, help="images to generate (default 10000)")
    parser.add_argument("--size", type=int, default=64, help="side of each generated image in px (default 64)")
    parser.add_argument("--image-size", type=int, default=32, help="data.image_size the check decodes for")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary) / "images"
        root.mkdir()
        os.environ["GENKIT_CACHE"] = str(Path(temporary) / "cache")
        broken = write_images(root, args.images, args.size)
        config = DataConfig(source="folder", path=str(root), image_size=args.image_size)
        times = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the broken files' warning, once per scan
            times["first scan, cold index"] = wall_seconds(build_dataset, config, "train")
            times["second start, warm index"] = wall_seconds(build_dataset, config, "train")
            times["other split (val), warm index"] = wall_seconds(build_dataset, config, "val")
            skipped = args.images - len(build_dataset(config, "train")) - len(build_dataset(config, "val"))
    title = f"{args.images} images of {args.size} px, {broken} broken, {skipped} skipped; image_size {args.image_size}"
    table = {name: {"seconds": value, "images/s": args.images / value} for name, value in times.items()}
    print_table(title, table, ("seconds", "images/s"), {"seconds": ".3f", "images/s": ".0f"})
    result = vars(args) | {"cpus": os.cpu_count(), "broken": broken, "skipped": skipped, "seconds": times}
    write_report(Path("runs/bench_data.json"), result)
