"""Write src/emface/data/photos.npz: small grey photographs for the synthetic data sets.

Run once by hand; the output is committed. Sources, all from scikit-image's
`skimage.data`, all public domain or CC0 (see the scikit-image documentation):

- astronaut: Eileen Collins, NASA (public domain); the face crop
- camera: "cameraman" replacement, CC0
- coffee: a cup of coffee, Pikolo Espresso Bar, CC0
- chelsea: Stefan van der Walt's cat, CC0; the face crop
- brick: a brick wall texture, CC0
- coins: Greek coins, Walters Art Museum, public domain

    pip install scikit-image && python scripts/make_bundled_photos.py
"""

import os

import numpy as np
from skimage import color, data, transform


def grey(img):
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3])
    else:
        img = img / 255.0
    return img


def small(img, shape):
    out = transform.resize(img, shape, anti_aliasing=True)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def main():
    photos = {
        "astronaut": small(grey(data.astronaut())[30:230, 160:320], (120, 96)),
        "chelsea": small(grey(data.chelsea())[40:240, 120:300], (120, 108)),
        "camera": small(grey(data.camera()), (256, 256)),
        "coffee": small(grey(data.coffee()), (200, 300)),
        "brick": small(grey(data.brick()), (256, 256)),
        "coins": small(grey(data.coins()), (152, 192)),
    }
    out = os.path.join(os.path.dirname(__file__), "..", "src", "emface", "data", "photos.npz")
    np.savez_compressed(out, **photos)
    print(f"wrote {out}: " + ", ".join(f"{k} {v.shape}" for k, v in photos.items()))


if __name__ == "__main__":
    main()
