"""Leave-group-out scoring on tiny data: pooled r, best lag, permutation null, groups, table."""

import numpy as np

from studio.train import loso_groups as lg


def _series(speaker, method, pred, truth, fps=25.0):
    return lg.Series(f"{speaker}_clip", speaker, method, np.asarray(pred, float), np.asarray(truth, float),
                     np.ones(len(truth), bool), fps)


def test_pooled_best_lag_recovers_a_known_delay():
    rng = np.random.default_rng(0)
    truth = np.convolve(rng.standard_normal(300), np.ones(5) / 5, "same")
    late = np.roll(truth, 2)  # the prediction comes 2 frames late: x[t + 2] = truth[t]
    lag, r = lg.best_pooled([(late, truth)])
    assert lag == 2 and r > 0.95
    assert lg.pooled_r([(late, truth)], 0) < r


def test_pooling_z_scores_each_clip():
    """A clip's offset or scale must not create correlation across clips."""
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(100), rng.standard_normal(100)
    # unrelated within each clip, but clip 2 has a large offset in both series
    r = lg.pooled_r([(a, b), (a + 50, b + 50)])
    assert abs(r) < 0.3


def test_permutation_null_sits_below_a_real_relation_and_near_zero_for_noise():
    rng = np.random.default_rng(2)
    truth = np.convolve(rng.standard_normal(400), np.ones(6) / 6, "same")
    pred = truth + 0.5 * rng.standard_normal(400)
    null = lg.permutation_null([(pred, truth)], [25.0], n=50, seed=0)
    assert null.shape == (50,)
    assert np.percentile(null, 95) < lg.best_pooled([(pred, truth)])[1] - 0.3
    assert abs(float(np.median(null))) < 0.25


def test_short_speakers_are_pooled_by_corpus():
    groups = lg.score_groups({"obama": 31.0, "grid_a": 5.0, "lrs3_b": 4.0, "lrs2_c": 3.4, "katie_hill": 2.4})
    assert groups["obama"] == "obama"
    assert groups["grid_a"] == groups["lrs3_b"] != groups["lrs2_c"]
    assert groups["katie_hill"] == lg.OTHER_GROUP


def test_folds_deal_long_and_short_speakers_round_robin():
    folds = lg.speaker_folds({"a": 100.0, "b": 50.0, "c": 20.0, "d": 3.0, "e": 2.0, "f": 1.0}, 3)
    assert folds == {"a": 0, "b": 1, "c": 2, "d": 0, "e": 1, "f": 2}


def test_table_reports_best_lag_r_lag_zero_r_and_the_null(tmp_path):
    rng = np.random.default_rng(3)
    by_seed = {}
    for seed in (0, 1):
        series = []
        for sp in ("grid_a", "grid_b"):
            truth = np.convolve(rng.standard_normal(120), np.ones(5) / 5, "same")
            series += [_series(sp, "prior", np.roll(truth, 1) + 0.3 * rng.standard_normal(120), truth),
                       _series(sp, "finetune", truth + 0.2 * rng.standard_normal(120), truth),
                       _series(sp, "template", rng.standard_normal(120), truth),
                       _series(sp, "energy", truth + rng.standard_normal(120), truth)]
        by_seed[seed] = series
    rows = lg.summarise(by_seed)
    prior = [r for r in rows if r["method"] == "prior"]
    assert len(prior) == 2 and all(r["lag"] == 1 and r["r_best"] > r["r0"] for r in prior)
    assert all(r["r_best"] > r["null95"] for r in prior)
    assert sum(r["method"] == "template" for r in rows) == 1  # floors once, not per seed
    text = lg.table(rows, note="note")
    assert "(lag +1)" in text and "median over groups" in text and "null 95th pct" in text
    lg.save_series(tmp_path / "s.npz", by_seed[0])
    back = lg.load_series(tmp_path / "s.npz")
    assert [s.method for s in back] == [s.method for s in by_seed[0]]
    np.testing.assert_allclose(back[0].pred, by_seed[0][0].pred)


def test_a_corpus_with_too_little_speech_joins_the_pooled_rest():
    groups = lg.score_groups({"lrs2_a": 3.0, "lrs2_b": 3.0, "pcavs_a": 5.0, "pcavs_b": 4.0, "katie_hill": 2.4})
    assert groups["pcavs_a"] == groups["pcavs_b"] != lg.OTHER_GROUP
    assert groups["lrs2_a"] == groups["katie_hill"] == lg.OTHER_GROUP


def test_the_null_shuffles_even_a_clip_shorter_than_one_segment():
    rng = np.random.default_rng(4)
    truth = np.convolve(rng.standard_normal(22), np.ones(3) / 3, "same")
    null = lg.permutation_null([(truth, truth)], [25.0], n=30, seed=0)
    assert float(np.median(null)) < 0.9  # a shuffle that moved nothing would give 1.0
