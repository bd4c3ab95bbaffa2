"""Write src/emface/data/photos.npz: small photographs for the synthetic data sets.

Run once by hand; the output is committed. Sources, all from scikit-image's
`skimage.data`, public domain or CC0 or with no known copyright restrictions
(see each function's notes in the scikit-image documentation):

- astronaut: Eileen Collins, NASA (public domain): her face, her mission patch,
  her helmet and the flag behind her
- camera: the cameraman, CC0 (Lav Varshney): also his head and camera
- coffee: a cup of coffee, CC0 (Rachel Michetti): also the cup
- chelsea: Stefan van der Walt's cat, CC0: its face
- rocket: a Falcon 9 launch, SpaceX (public domain): also the rocket
- hubble_deep_field: NASA (public domain)
- immunohistochemistry: CMMI, no known copyright restrictions: also one gland
- brick: a brick wall texture, CC0
- coins: Greek coins, Brooklyn Museum, no known copyright restrictions: also one coin

Grey photos are stored under their names (``astronaut``, ``camera``, ...; the
first six exactly as in emface 0.1), colour ones (RGB) under ``rgb_<name>``.

    pip install scikit-image && python scripts/make_bundled_photos.py
"""

import os

import numpy as np
from skimage import color, data, transform

# (source image, (row0, row1, col0, col1), stored size) of each face crop
CROPS = {
    "astronaut": ("astronaut", (30, 230, 160, 320), (120, 96)),
    "chelsea": ("chelsea", (40, 240, 120, 300), (120, 108)),
    "cup": ("coffee", (10, 300, 150, 480), (120, 120)),
    "patch": ("astronaut", (300, 420, 120, 220), (120, 100)),
    "helmet": ("astronaut", (330, 510, 270, 500), (110, 120)),
    "rocket": ("rocket", (120, 420, 290, 370), (120, 64)),
    "flag": ("astronaut", (0, 260, 0, 60), (120, 56)),
    "coin": ("coins", (20, 90, 250, 320), (96, 96)),
    "cameraman": ("camera", (110, 330, 190, 400), (120, 114)),
    "tissue": ("immunohistochemistry", (280, 470, 220, 420), (114, 120)),
}
# (source image, stored size) of each whole photo
WHOLE = {
    "camera": ("camera", (256, 256)),
    "coffee": ("coffee", (200, 300)),
    "brick": ("brick", (256, 256)),
    "coins": ("coins", (152, 192)),
    "rocket_launch": ("rocket", (214, 320)),
    "hubble": ("hubble_deep_field", (218, 250)),
    "tissue_slide": ("immunohistochemistry", (256, 256)),
}


def grey(img):
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3])
    else:
        img = img / 255.0
    return img


def rgb(img):
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3] / 255.0


def small(img, shape):
    out = transform.resize(img, shape, anti_aliasing=True)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def main():
    photos = {}
    for name, (src, (r0, r1, c0, c1), shape) in CROPS.items():
        img = getattr(data, src)()[r0:r1, c0:c1]
        photos[name] = small(grey(img), shape)
        photos["rgb_" + name] = small(rgb(img), shape)
    for name, (src, shape) in WHOLE.items():
        img = getattr(data, src)()
        photos[name] = small(grey(img), shape)
        photos["rgb_" + name] = small(rgb(img), shape)
    out = os.path.join(os.path.dirname(__file__), "..", "src", "emface", "data", "photos.npz")
    np.savez_compressed(out, **photos)
    print(f"wrote {out}: " + ", ".join(f"{k} {v.shape}" for k, v in photos.items()))


if __name__ == "__main__":
    main()
