"""The readers of `emface.io.load_stack`, one module per family of files.

- ``arrays.py``: ``.npy`` and ``.npz``;
- ``tiff.py``: multi-page TIFF;
- ``frames.py``: pictures, and folders of them (`FrameFolder`);
- ``stores.py``: zarr stores and HDF5 files;
- ``science.py``: MRC/MRCS particle stacks and FITS cubes (the ``mrc`` and ``fits`` extras);
- ``_common.py``: the decompression limit, the grey conversion, the missing-extra error.

Videos are read by `emface.video`. Every reader raises `emface.errors.InputError`
with a one-line message; the lazy stacks they return are in `emface._lazyfiles`.
"""
