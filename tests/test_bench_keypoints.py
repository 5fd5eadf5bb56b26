"""scripts/bench/bench_keypoints.py's plumbing: variants, the warm feature caches, the table."""
from __future__ import annotations

import bench_keypoints
import pytest

from core.errors import ConfigError


def test_unknown_variants_are_refused_and_the_baseline_is_always_run():
    with pytest.raises(ConfigError, match="unknown variant"):
        bench_keypoints.parse_args(["--set", "a=m:r", "--variants", "siftt"])
    assert bench_keypoints.parse_args(["--set", "a=m:r", "--variants", "sift"]).variants == ["none", "sift"]
    assert bench_keypoints.matcher_of("all") == "rootsift" and bench_keypoints.matcher_of("confusers") == "sift"


def test_a_variants_cache_holds_the_warm_features_but_no_pair_records(tmp_path):
    warm = tmp_path / "warm"
    (warm / "ab").mkdir(parents=True)
    (warm / "ab" / "key.npz").write_bytes(b"features")
    for name in ("pair_records.sqlite", "pair_records.sqlite-wal"):
        (warm / name).write_bytes(b"records")
    target = tmp_path / "variant"
    (target / "stale").mkdir(parents=True)
    bench_keypoints.features_only(warm, target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == ["ab/key.npz"]


def test_the_table_gives_re_ranking_seconds_against_todays_sift():
    record = {"score": 0.5, "BAKS": 0.4, "BAUS": 0.6, "rank1": 0.3, "pairs_matched": 10, "matcher_weight": None,
              "options": {}}
    records = [{**record, "name": "s", "variant": "none", "seconds": 10.0, "cpu_seconds": 8.0},
               {**record, "name": "s", "variant": "sift", "seconds": 30.0, "cpu_seconds": 28.0, "matcher_weight": 1.0},
               {**record, "name": "s", "variant": "all", "seconds": 36.0, "cpu_seconds": 48.0,
                "options": {"matcher: weighting confusers": True, "matcher: weighting burstiness": False,
                            "matcher: geometry": "similarity"}}]
    table = bench_keypoints.markdown(records, ["s"], ["none", "sift", "all"])
    row = next(line for line in table.splitlines() if line.startswith("| s | all |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "26" and cells[6] == "1.30", "(36 - 10) / (30 - 10)"
    assert cells[7] == "40" and cells[8] == "2.00", "(48 - 8) / (28 - 8)"
    assert cells[11] == "weighting confusers, geometry similarity", "options kept, not those dropped"


def test_the_failure_script_names_each_photos_site_as_the_generator_drew_it():
    from sites_failure import photo_sites

    from data.synthetic_scene import scene_cast

    where = photo_sites(seed=3, individuals=6, images=4, sites=3)
    assert len(where) == 24 and {group for group, _ in where.values()} == {0, 1, 2}
    from data.synthetic import _plan

    for person in _plan(3, 6, 4):
        for photo in person.photos:
            assert where[photo.image_id] == (person.group, scene_cast(3, person.index, photo.k, 6, sites=3).background)
