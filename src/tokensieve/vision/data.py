"""Offline benchmark data: real photos (scikit-image's data folder, Debian's opencv-doc examples) in
deterministic views, and Fashion-MNIST (Debian's dataset-fashion-mnist) for the linear probe."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from tokensieve.errors import ModelNotFoundError
from tokensieve.vision.api import load_image

# every natural photo in the two folders, one of each near-duplicate pair (stereo left/right, before/after,
# object/object-in-scene), so a view's nearest other photo is never a second shot of the same scene;
# synthetic drawings, renders, text pages, logos and templates are left out
SKIMAGE = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
           "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "moon.png", "grass.png", "brick.png", "cell.png",
           "clock_motion.png", "coins.png", "gravel.png", "microaneurysms.png"]  # fmt: skip
OPENCV_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV = ["HappyFish.jpg", "baboon.jpg", "fruits.jpg", "butterfly.jpg", "messi5.jpg", "building.jpg", "home.jpg",
          "starry_night.jpg", "aero1.jpg", "apple.jpg", "orange.jpg", "graf1.png", "box_in_scene.png",
          "basketball1.png", "aloeL.jpg", "leuvenA.jpg", "sudoku.png", "board.jpg", "chicky_512.png",
          "ela_original.jpg", "left01.jpg", "licenseplate_motion.jpg", "pca_test1.jpg", "rubberwhale1.png",
          "squirrel_cls.jpg", "stuff.jpg", "text_defocus.jpg"]  # fmt: skip
FASHION = Path("/usr/share/datasets/fashion-mnist")


def photo_paths() -> list[Path]:
    """The photos, alternating between the two sources so any prefix mixes both."""
    spec = importlib.util.find_spec("skimage")
    ski: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations))) / "data"
        ski = [root / n for n in SKIMAGE if (root / n).is_file()]
    ocv = [OPENCV_DIR / n for n in OPENCV if (OPENCV_DIR / n).is_file()]
    paths = [p for pair in zip(ski, ocv, strict=False) for p in pair]
    paths += ski[len(ocv) :] + ocv[len(ski) :]
    if not paths:
        raise ModelNotFoundError("no photos found: pip install scikit-image (and apt-get install opencv-doc)")
    return paths


def views(image: np.ndarray, n: int = 3) -> list[np.ndarray]:
    """Deterministic views of one photo: the whole photo, a 70% crop off-centre, its mirror, a mirrored 60%
    crop (in that order, so two views are already a real test: a crop, not only a flip)."""
    h, w = image.shape[:2]
    ch, cw = int(h * 0.7), int(w * 0.7)
    out = [image, image[h - ch :, :cw], image[:, ::-1]]
    ch, cw = int(h * 0.6), int(w * 0.6)
    out.append(image[(h - ch) // 2 : (h - ch) // 2 + ch, w - cw :][:, ::-1])
    return [np.ascontiguousarray(v) for v in out[:n]]


def load_photos(limit: int) -> list[tuple[str, np.ndarray]]:
    photos = []
    for p in photo_paths()[:limit]:
        photos.append((p.stem, load_image(p)))
    return photos


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion(split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` class-balanced Fashion-MNIST images [n, 28, 28] and labels from ``split`` ("train" / "t10k")."""
    img, lab = FASHION / f"{split}-images-idx3-ubyte.gz", FASHION / f"{split}-labels-idx1-ubyte.gz"
    if not img.is_file():
        raise ModelNotFoundError("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist")
    x, y = _idx(img), _idx(lab)
    rng = np.random.default_rng(seed)
    per = n // 10
    pick = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per] for c in range(10)])
    return x[pick], y[pick]
