"""The ``emface`` command: image stacks in, pictures and a report out.

    emface fit INPUT --face-shape HxW --out DIR     fit, write pictures, tables, model and report
    emface predict MODEL INPUT --out FILE.csv       positions of new images under a saved model
    emface generate --out FILE.npy | --video FILE.mp4 ...
                                                    a synthetic stack or video, the truth saved beside it
    emface demo --out DIR                           the note's experiments on a bundled example

Bad input, and an output that cannot be written, end with exit code 2 and one
line on stderr; Ctrl-C writes what has been computed so far and ends with exit
code 130. Every file is written atomically (`emface.outputs`): a temporary file
in the same folder, renamed into place, never written through a symlink; the
files of one fit are renamed together, so a full disk leaves an earlier result
whole. A second fit into a folder that a running fit holds is refused.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
import zipfile

import click
import numpy as np

from . import __version__
from .errors import InputError, one_line
from .options import click_options, estimator_kwargs
from .outputs import (FolderLocked, OutputError, OutputFolder, all_or_nothing, atomic_write,
                      remove_stale_temporaries)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """Ctrl-C after partial results were written."""


# ----------------------------------------------------------------------------- helpers

def _parse_shape(ctx, param, value):
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX,*]\s*(\d+)\s*", str(value))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise click.BadParameter(f"expected HxW with two positive integers, such as 48x40; got {value!r}",
                                 param_hint=f"'--{param.name.replace('_', '-')}'")
    return int(m.group(1)), int(m.group(2))


#: the names a fit writes in --out that may differ from run to run: an earlier run's that this run does not
#: write are removed (a fit with fewer faces leaves no face_3.png behind)
_FIT_PICTURES = (r"face\.png", r"faces\.png", r"face_\d+\.png", r"face_size\.png", r"misfit\.png",
                 r"worst_frames\.png")


def _out_folder(path):
    """The --out folder, created (and removed again if the run writes nothing), locked and cleaned of
    stale temporary files until the command ends: see `emface.outputs.OutputFolder`."""
    return click.get_current_context().with_resource(OutputFolder(path))


class _Progress:
    """One progress bar per EM run, showing the objective (and the speed during incremental sweeps).

    `header` is printed when the first pass ends, so input refused by the fit
    leaves its one error line alone.
    """

    def __init__(self, max_iter, quiet, header=None):
        self.max_iter = max_iter
        self.quiet = quiet
        self.header = header
        self.bar = None
        self.run = None

    def __call__(self, info):
        if self.quiet:
            return
        from tqdm.auto import tqdm

        # no monitor thread: a bar refreshed from the callback after every pass needs none
        tqdm.monitor_interval = 0
        if self.header:
            click.echo(self.header, err=True)
            self.header = None
        if info["run"] != self.run:
            self.close()
            self.run = info["run"]
            self.bar = tqdm(total=self.max_iter, desc=f"run {self.run + 1}", unit="it",
                            leave=True, file=sys.stderr, dynamic_ncols=True)
        n = min(info["iter"], self.max_iter)
        self.bar.update(n - self.bar.n)
        if "block" in info:
            rate = info["images"] / max(info["seconds"], 1e-9)
            self.bar.set_postfix_str(f"block {info['block'] + 1}/{info['n_blocks']}, {rate:,.0f} images/s, "
                                     f"objective {info['objective']:.6g}")
        else:
            self.bar.set_postfix_str(f"objective {info['objective']:.6g}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _echo(quiet, msg):
    if not quiet:
        click.echo(msg, err=True)


# ----------------------------------------------------------------------------- commands

_ALLOW_EXTERNAL_HELP = ("Read HDF5 data stored in other files (external storage, virtual datasets, external "
                        "links); refused by default, as such a file can point at any file on this machine.")


class _Commands(click.Group):
    """click turns an EOFError into its Abort ("interrupted"): here it is what it is, a file that ends early."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EOFError as exc:
            raise InputError(f"a file ended early ({one_line(exc) or 'no data'})") from None


@click.group(cls=_Commands, context_settings=dict(help_option_names=["-h", "--help"], max_content_width=100))
@click.version_option(__version__, prog_name="emface")
def cli():
    """Recover an object seen at unknown positions in many noisy images, by EM."""


@cli.command()
@click.argument("input", metavar="INPUT")
@click.option("--out", "out_dir", required=True, metavar="DIR", help="Folder for pictures, tables, model and report.")
@click_options  # the estimator's options, from the one table emface.options.OPTIONS
@click.option("--grey", is_flag=True, help="Convert colour frames to grey before fitting.")
@click.option("--layout", type=click.Choice(["khw", "hwk"]), default="khw", show_default=True,
              help="Axis order of .npy/.npz input: images first (khw) or last (hwk).")
@click.option("--cache", "cache_dir", default=None, metavar="DIR",
              help="Video input: decode the frames once into DIR and reuse them (also in later runs).")
@click.option("--allow-external-data", is_flag=True, help=_ALLOW_EXTERNAL_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or messages.")
def fit(input, out_dir, grey, layout, cache_dir, allow_external_data, quiet, **options):
    """Fit the model to the image stack INPUT and write the results to DIR.

    INPUT is a .npy or .npz array, a multi-page TIFF, a folder of PNG/JPEG/TIFF
    frames (natural sort order), a video file, a zarr store, an HDF5 file, an
    MRC/MRCS particle stack or a FITS cube. Colour stays colour unless --grey is given.
    """
    from .estimator import FaceEM

    settings = estimator_kwargs(options)
    out = _out_folder(out_dir)
    if settings["checkpoint"] is not None:  # a killed run's half-written checkpoint
        remove_stale_temporaries(os.path.dirname(os.path.abspath(settings["checkpoint"])))
    X, names = _load(input, layout=layout, grey=grey, cache_dir=cache_dir, quiet=quiet,
                     max_memory=settings["max_memory"], allow_external=allow_external_data)
    K, H, W = (int(v) for v in X.shape[:3])
    est = FaceEM(**settings)  # its fit refuses a face larger than the frames, as any other bad setting
    face_shape = settings["face_shape"]
    colour = f", {X.shape[3]} channels" if len(X.shape) == 4 else ""
    size = "a size chosen from the data" if not isinstance(face_shape[0], int) else f"{face_shape[0]}x{face_shape[1]}"
    progress = _Progress(est.max_iter, quiet, f"emface: {K} images of {H}x{W}{colour}, {est.n_faces} face(s) of "
                                              f"{size}, {'hard' if est.hard else 'soft'} EM")
    est.set_params(callback=progress)
    interrupted = False
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est.fit(X)
    except KeyboardInterrupt:
        interrupted = True
        caught = []
    finally:
        progress.close()
    elapsed = time.perf_counter() - t0
    if not hasattr(est, "faces_"):
        raise Interrupted("interrupted before the first iteration finished; nothing to write")
    for text in dict.fromkeys(str(w_.message) for w_ in caught):  # a failing checkpoint warns once
        _echo(quiet, f"emface: warning: {text}")
    est.set_params(callback=None)
    with all_or_nothing():  # every file renamed into place at the end, or (a full disk) none
        written = _write_fit_outputs(out_dir, est, X, names, input, elapsed, interrupted)
    stale = out.remove_stale(written, _FIT_PICTURES)
    if stale:
        _echo(quiet, f"emface: note: removed {', '.join(stale)}, left in {out_dir} by an earlier run")
    if interrupted:
        raise Interrupted(f"interrupted: wrote the best state so far to {out_dir}")
    _echo(quiet, f"emface: wrote {out_dir}/report.html ({elapsed:.1f} s)")


class _LogNotes(logging.Handler):
    """The log records of the libraries that read the input (tifffile, PIL, ...), kept to be shown as
    notes: on their own they would print one line each on stderr beside emface's one error line."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {one_line(record.getMessage())}")


def _load(input, *, layout="khw", grey=False, cache_dir=None, quiet=False, **options):
    """`load_stack` (`options`: max_memory, allow_external), with its notes (such as a dropped alpha
    channel) and the reading libraries' log warnings as one line each, once; when the input is refused,
    only the error's line is printed."""
    from .io import load_stack

    logs = _LogNotes()
    root = logging.getLogger()
    root.addHandler(logs)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            X, names = load_stack(input, layout=layout, grey=grey, cache_dir=cache_dir, **options)
    finally:
        root.removeHandler(logs)
    for text in dict.fromkeys([str(w_.message) for w_ in caught] + logs.messages):
        _echo(quiet, f"emface: note: {text}")
    return X, names


def _summary(est, X):
    """The soft posterior summary of the fitted images: kept from a soft fit, one pass after a hard one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.posterior_summary(X, as_training=True) if est.hard else est.posterior_summary()


def _write_fit_outputs(out_dir, est, X, names, input, elapsed, interrupted):
    from .io import write_positions
    from .figures import write_fit_pictures, write_misfit_pictures
    from .report import write_fit_report

    if interrupted:  # the last E-step may not be the best state's: summarise it afresh
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summ = est.posterior_summary(X, as_training=True)
    else:
        summ = _summary(est, X)
    write_positions(os.path.join(out_dir, "positions.csv"), summ, names)
    est.save(os.path.join(out_dir, "model.npz"))
    pics = write_fit_pictures(out_dir, est)
    pics.update(write_misfit_pictures(out_dir, est, X, summ))
    write_fit_report(os.path.join(out_dir, "report.html"), est, summ, pics, source=input, image_shape=tuple(X.shape),
                     names=names, elapsed=elapsed, interrupted=interrupted)
    return ["positions.csv", "model.npz", "report.html", *pics]


@cli.command()
@click.argument("model", metavar="MODEL")
@click.argument("input", metavar="INPUT")
@click.option("--out", "out_file", required=True, metavar="FILE.csv")
@click.option("--layout", type=click.Choice(["khw", "hwk"]), default="khw", show_default=True)
@click.option("--grey", is_flag=True, help="Convert colour frames to grey (for a grey model).")
@click.option("--allow-external-data", is_flag=True, help=_ALLOW_EXTERNAL_HELP)
@click.option("-q", "--quiet", is_flag=True)
def predict(model, input, out_file, layout, grey, allow_external_data, quiet):
    """Faces and positions in the images INPUT under the saved MODEL (model.npz)."""
    from .estimator import FaceEM
    from .io import write_positions
    from .persistence import check_out_file

    if not os.path.exists(model):  # anything else there (a folder, a FIFO) is refused by the loader, in its words
        raise InputError(f"{model}: no such model file")
    try:
        est = FaceEM.load(model)
    except InputError:  # a ModelFileError: one line that names the file already
        raise
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{model}: not an emface model ({one_line(exc) or type(exc).__name__})") from None
    check_out_file(out_file)
    X, names = _load(input, layout=layout, grey=grey, quiet=quiet, allow_external=allow_external_data)
    if tuple(X.shape[1:]) != tuple(est.background_.shape):
        want = "x".join(map(str, est.background_.shape[:2])) + (
            f" with {est.background_.shape[2]} channels" if est.background_.ndim == 3 else " grey")
        got = "x".join(map(str, X.shape[1:3])) + (f" with {X.shape[3]} channels" if len(X.shape) == 4 else " grey")
        raise InputError(f"{input}: frames are {got} but the model was fitted on {want}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summ = est.posterior_summary(X)
    write_positions(out_file, summ, names)
    _echo(quiet, f"emface: wrote faces and positions of {len(summ.positions)} images to {out_file}")


@cli.command()
@click.option("--out", "out_file", default=None, metavar="FILE.npy",
              help="Write the stack as a .npy array (this or --video is required).")
@click.option("--video", "video_file", default=None, metavar="FILE.mp4",
              help="Write the stack as an H.264 video instead (libx264, yuv420p, or yuv444p when a side is "
                   "odd; constant quality --crf; preset veryfast, tuned for fast decoding), block by block, "
                   "so it may be far longer than memory; grey frames are stored as RGB with three equal "
                   "channels. Also .mkv, .mov, .m4v, .avi.")
@click.option("--n-images", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--image-shape", callback=_parse_shape, default="100x120", show_default=True, metavar="HxW")
@click.option("--face-shape", callback=_parse_shape, default="40x32", show_default=True, metavar="HxW")
@click.option("--faces", "n_faces", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of different faces (bundled photos, or --face repeated).")
@click.option("--colour", is_flag=True, help="RGB images from the colour photographs.")
@click.option("--noise", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Noise standard deviation relative to the faces' contrast.")
@click.option("--prior", type=click.Choice(["uniform", "band", "blob"]), default="uniform", show_default=True)
@click.option("--face", "face_photos", multiple=True,
              help="Face photo (a bundled name or an image file); repeat for several faces.")
@click.option("--background", default="camera", show_default=True, help="Background photo (name or file).")
@click.option("--dtype", type=click.Choice(["float64", "float32", "uint8"]), default="float64", show_default=True,
              help="Of the .npy stack (a video is always 8-bit).")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=25.0, show_default=True,
              help="Frame rate of --video.")
@click.option("--crf", type=click.IntRange(0, 51), default=10, show_default=True,
              help="H.264 constant quality of --video: 0 is lossless (in Y'CbCr), 10 near lossless.")
@click.option("--seed", type=int, default=None)
@click.option("-q", "--quiet", is_flag=True)
def generate(out_file, video_file, n_images, image_shape, face_shape, n_faces, colour, noise, prior, face_photos,
             background, dtype, fps, crf, seed, quiet):
    """Write a synthetic stack made from photographs, and its truth beside it (FILE.truth.npz).

    The stack is a .npy array (--out FILE.npy; ".npy" is added to a name without it, as numpy
    does) or a video (--video FILE.mp4).
    """
    from .datasets import PHOTOS
    from .io import read_image
    from .persistence import check_out_file

    if out_file is None and video_file is None:
        raise click.UsageError("Missing option '--out' (or '--video').", ctx=click.get_current_context())
    if out_file is not None and video_file is not None:
        raise click.UsageError("give either --out FILE.npy or --video FILE.mp4, not both",
                               ctx=click.get_current_context())
    from .video import WRITABLE_SUFFIXES as video_exts

    if video_file is not None and not video_file.lower().endswith(video_exts):
        raise InputError(f"--video {video_file}: expected a file name ending in {', '.join(video_exts)}")
    if out_file is not None and not out_file.endswith(".npy"):
        out_file += ".npy"  # the name numpy would write, and the one `emface fit` reads as a .npy stack
    check_out_file(out_file if video_file is None else video_file)
    if face_shape[0] > image_shape[0] or face_shape[1] > image_shape[1]:
        raise InputError(f"--face-shape {face_shape[0]}x{face_shape[1]} is larger than "
                         f"--image-shape {image_shape[0]}x{image_shape[1]}")
    if face_photos and len(face_photos) != n_faces:
        raise InputError(f"--face is given {len(face_photos)} time(s) but --faces is {n_faces}")
    faces = [p if p in PHOTOS else read_image(p) for p in face_photos] or None
    bg = background if background in PHOTOS else read_image(background)
    with all_or_nothing():  # the stack and its truth, or neither
        out_file, shape, what, stem = _generate(out_file, video_file, n_images, image_shape, face_shape, n_faces,
                                                colour, noise, prior, faces, bg, dtype, fps, crf, seed, quiet)
    _echo(quiet, f"emface: wrote {shape[0]} {what} to {out_file} and the truth to {stem}.truth.npz")


def _generate(out_file, video_file, n_images, image_shape, face_shape, n_faces, colour, noise, prior, faces, bg,
              dtype, fps, crf, seed, quiet):
    from .datasets import make_faces, save_truth, write_synthetic_video

    if video_file is not None:
        bar = None
        if not quiet:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_images, desc="frames", unit="frame", file=sys.stderr, dynamic_ncols=True)
        try:
            truth = write_synthetic_video(video_file, n_images, image_shape, face_shape, n_faces=n_faces,
                                          face=faces, background=bg, colour=colour, noise=noise, prior=prior,
                                          random_state=seed, fps=fps, crf=crf,
                                          progress=None if bar is None else bar.update)
        finally:
            if bar is not None:
                bar.close()
        out_file, shape = video_file, (n_images,) + tuple(image_shape)
        stem = os.path.splitext(video_file)[0]
        what = f"frames of {shape[1]}x{shape[2]} (H.264, crf {crf}, {fps:g} fps)"
    else:
        X, truth = make_faces(n_images, image_shape, face_shape, n_faces=n_faces, face=faces, background=bg,
                              colour=colour, noise=noise, prior=prior, dtype=np.dtype(dtype), random_state=seed)
        atomic_write(out_file, lambda tmp: np.save(tmp, X))
        shape = X.shape
        stem = out_file[:-4]
        what = f"images of {X.shape[1]}x{X.shape[2]}"
    save_truth(stem + ".truth.npz", truth)
    return out_file, shape, what, stem


@cli.command()
@click.option("--out", "out_dir", default="emface-demo", show_default=True, metavar="DIR")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True)
def demo(out_dir, seed, quiet):
    """Reproduce the note's experiments on a bundled example made from real photographs.

    Hard EM from one random start, hard EM for 10 iterations, soft EM with 10
    restarts, hard EM with prior smoothing 100, emface's defaults, and the truth:
    one figure grid with each run's face, background and objective, and a report.
    """
    from .demo import run_demo

    _out_folder(out_dir)
    run_demo(out_dir, seed=seed, echo=lambda m: _echo(quiet, m))


# ----------------------------------------------------------------------------- entry point

def main(argv=None):
    """Run the command line; exit 2 with one line on bad input, 130 on Ctrl-C (and only on Ctrl-C)."""
    # a library's log warning while the fit reads its input lazily is not printed: stderr keeps to
    # emface's own lines (the input's notes are shown by _load)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    try:
        rv = cli.main(args=argv, prog_name="emface", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("emface: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("emface: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Interrupted as exc:
        click.echo(f"emface: {one_line(exc)}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.UsageError as exc:
        command = exc.ctx.info_name if exc.ctx is not None and exc.ctx.info_name != "emface" else None
        hint = f" (see: emface {command} --help)" if command else " (see: emface --help)"
        click.echo(f"emface: error: {one_line(exc.format_message())}{hint}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.ClickException as exc:
        click.echo(f"emface: error: {one_line(exc.format_message())}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except (InputError, ValueError, MemoryError, FloatingPointError) as exc:
        click.echo(f"emface: error: {one_line(exc)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except ImportError as exc:  # an optional extra that is not installed: the message names the pip install
        click.echo(f"emface: error: {one_line(exc)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except (OutputError, FolderLocked) as exc:  # their message names the file or folder
        click.echo(f"emface: error: {one_line(exc)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        click.echo(f"emface: error: {where}{one_line(exc.strerror or exc)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
