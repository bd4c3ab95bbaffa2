"""The kernels' on-disk Numba caches go when any of the files they compile together changes."""

from emface.engine._numba_base import SOURCES, drop_stale_caches, sources_stamp


def _tree(tmp_path):
    src = tmp_path / "engine"
    cache = src / "__pycache__"
    cache.mkdir(parents=True)
    for name in SOURCES:
        (src / name).write_text(f"# {name}\n")
    kept = [cache / "chunk.cpython-311.pyc", cache / "other.f-12.py311.nbi"]
    cached = [cache / "_numba_kernels.fused_pass-300.py311.nbi", cache / "_numba_kernels.fused_pass-300.py311.1.nbc",
              cache / "_formulas.decode-97.py311.nbi", cache / "_numba_sums._add_crop-38.py311.2.nbc"]
    for p in kept + cached:
        p.write_bytes(b"x")
    return src, cache, kept, cached


def test_caches_written_from_other_sources_are_dropped(tmp_path):
    src, cache, kept, cached = _tree(tmp_path)
    stamp = sources_stamp(src)
    assert drop_stale_caches(cache, stamp) is True  # no mark yet: compiled from unknown sources
    assert not any(p.exists() for p in cached) and all(p.exists() for p in kept)
    assert (cache / "emface_kernels.stamp").read_text() == stamp
    for p in cached:
        p.write_bytes(b"x")
    assert drop_stale_caches(cache, sources_stamp(src)) is False  # the same sources: kept
    assert all(p.exists() for p in cached)
    (src / "_formulas.py").write_text("# a formula changed\n")  # only the inlined file changed
    new = sources_stamp(src)
    assert new != stamp
    assert drop_stale_caches(cache, new) is True
    assert not any(p.exists() for p in cached) and all(p.exists() for p in kept)


def test_a_read_only_or_missing_cache_is_left_alone(tmp_path):
    assert drop_stale_caches(tmp_path / "no" / "such" / "dir", "abc") is False
