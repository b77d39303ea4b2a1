"""bench.metrics.stats against hand-computed values and scipy references."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.metrics import stats as S


def test_encode_counts_proportions_unknown_counted_separately():
    codes = S.encode_labels(["a", None, "b", "a", float("nan"), "a"], ["a", "b", "c"])
    assert codes.tolist() == [0, -1, 1, 0, -1, 0]
    counts, n_unknown = S.group_counts(codes, 3)
    assert counts.tolist() == [3, 1, 0] and n_unknown == 2
    np.testing.assert_allclose(S.proportions(counts), [0.75, 0.25, 0.0])
    assert np.isnan(S.proportions(np.zeros(3))).all()  # nothing labelled: undefined, not 0


def test_label_outside_groups_is_an_error_not_unknown():
    with pytest.raises(ValueError, match="'Male'.*not one of the groups"):
        S.encode_labels(["male", "Male"], ["male", "female"])


@pytest.mark.parametrize("p", [[0.5, 0.5], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.1, 0.0, 0.6, 0.3]])
def test_discrepancies_match_scipy_and_hand_values(p):
    p = np.array(p)
    k = p.size
    assert S.kl_uniform(p) == pytest.approx(sps.entropy(p, np.full(k, 1 / k)), abs=1e-12)
    assert S.norm_entropy(p) == pytest.approx(sps.entropy(p) / math.log(k), abs=1e-12)
    assert S.parity_l2(p) == pytest.approx(math.sqrt(sum((x - 1 / k) ** 2 for x in p)))
    assert S.max_min_gap(p) == pytest.approx(max(p) - min(p))


def test_discrepancy_extremes_and_zero_convention():
    one_hot = np.array([1.0, 0.0, 0.0])  # 0 log 0 = 0, so KL = log K, entropy 0
    assert S.kl_uniform(one_hot) == pytest.approx(math.log(3))
    assert S.norm_entropy(one_hot) == 0.0
    assert S.parity_l2(one_hot) == pytest.approx(math.sqrt(1 - 1 / 3))
    uniform = np.full(4, 0.25)
    assert S.kl_uniform(uniform) == pytest.approx(0) and S.norm_entropy(uniform) == pytest.approx(1)


def test_discrepancies_vectorise_and_propagate_nan():
    p = np.array([[[0.2, 0.8], [np.nan, np.nan]], [[1.0, 0.0], [0.5, 0.5]]])
    for fn in S.DISCREPANCIES.values():
        out = fn(p)
        assert out.shape == (2, 2) and np.isnan(out[0, 1])
        assert out[1, 0] == pytest.approx(float(fn(p[1, 0])))
    with pytest.raises(ValueError, match="at least 2 groups"):
        S.norm_entropy(np.array([1.0]))


def test_chisquare_matches_scipy_and_hand_value():
    stat, p = S.chisquare_uniform(np.array([10, 0, 5]))
    assert stat == pytest.approx(10.0)  # expected 5 each: (25 + 25 + 0) / 5
    assert p == pytest.approx(math.exp(-5))  # chi2 with df 2: sf(x) = exp(-x/2)
    counts = np.array([31, 12, 7, 50])
    ref = sps.chisquare(counts)
    assert S.chisquare_uniform(counts) == pytest.approx((ref.statistic, ref.pvalue))
    assert all(math.isnan(x) for x in S.chisquare_uniform(np.zeros(3)))


def test_project_simplex_hand_example_and_kkt():
    np.testing.assert_allclose(S.project_simplex(np.array([0.5, 0.6, -0.2])), [0.45, 0.55, 0.0])
    np.testing.assert_allclose(S.project_simplex(np.array([3.0, 3.0, 3.0])), [1 / 3] * 3)
    on = np.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(S.project_simplex(on), on)  # already on the simplex
    v = np.random.default_rng(1).normal(size=(200, 5)) * 2
    w = S.project_simplex(v)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(1), 1.0)
    # KKT: v - w is a constant theta on the support, and v <= theta off it
    for vi, wi in zip(v, w):
        theta = (vi - wi)[wi > 0]
        assert np.ptp(theta) < 1e-9 and (vi[wi == 0] <= theta[0] + 1e-9).all()
    assert np.isnan(S.project_simplex(np.array([np.nan, 0.5]))).all()


def test_confusion_correction_recovers_p_exactly_on_noiseless_input():
    rng = np.random.default_rng(0)
    conf = rng.random((4, 4)) + 3 * np.eye(4)
    conf /= conf.sum(1, keepdims=True)
    p = rng.dirichlet(np.ones(4), size=6)
    p[0] = [0.0, 0.0, 1.0, 0.0]  # a vertex (groups never produced) too
    q = p @ conf  # q = C^T p for each row
    np.testing.assert_allclose(S.correct_proportions(q, conf), p, atol=1e-12)
    # noisy q whose least-squares solution leaves the simplex is projected back onto it
    out = S.correct_proportions(np.array([0.05, 0.95]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    np.testing.assert_allclose(out, [0.0, 1.0])


def test_confusion_matrix_is_validated():
    with pytest.raises(ValueError, match="shape"):
        S.correct_proportions(np.array([0.5, 0.5]), np.eye(3))
    with pytest.raises(ValueError, match="row-normalise"):
        S.correct_proportions(np.array([0.5, 0.5]), np.array([[2.0, 0.0], [0.0, 1.0]]))


def test_pad_by_prompt_keeps_order_and_masks():
    values, mask = S.pad_by_prompt(["b", "a", "b", "c", "a", "b"], np.arange(6))
    assert values[mask].tolist() == [0, 2, 5, 1, 4, 3]
    assert mask.sum(1).tolist() == [3, 2, 1]
    v2, m2 = S.pad_by_prompt(["x", "x"], np.array([[1, 2], [3, 4]]))
    assert v2.shape == (1, 2, 2) and v2[0].tolist() == [[1, 2], [3, 4]]
    v0, m0 = S.pad_by_prompt([], np.array([]))
    assert v0.shape == (0, 0) and not m0.any()


def test_resample_is_two_stage():
    # prompt i holds values 100 i + j; a resampled row must come from one prompt, with its size
    values, mask = S.pad_by_prompt(np.repeat([0, 1, 2], [5, 1, 3]),
                                   np.array([0, 1, 2, 3, 4, 100, 200, 201, 202]))
    res, rmask = S._resample(values, mask, 500, np.random.default_rng(0), True)
    src = res // 100
    assert ((src == src[..., :1]) | ~rmask).all()
    sizes = np.array([5, 1, 3])[src[..., 0]]
    assert (rmask.sum(-1) == sizes).all()
    assert len(np.unique(res[rmask])) == 9  # images are redrawn, every one appears somewhere


def test_bootstrap_is_seeded_and_degenerates_gracefully():
    rng = np.random.default_rng(3)
    x, m = S.pad_by_prompt(np.repeat(np.arange(8), 6), rng.normal(size=48))
    a = S.mean_ci(x, m, np.random.default_rng(7))
    assert a == S.mean_ci(x, m, np.random.default_rng(7))
    assert a.lo < a.value < a.hi
    assert a != S.mean_ci(x, m, np.random.default_rng(8))
    one, m1 = S.pad_by_prompt(["p"], np.array([0.3]))  # one prompt, one image
    assert S.mean_ci(one, m1, np.random.default_rng(0)) == S.Estimate(0.3, 0.3, 0.3)
    empty = S.mean_ci(*S.pad_by_prompt([], np.array([])), np.random.default_rng(0))
    assert all(math.isnan(v) for v in (empty.value, empty.lo, empty.hi))


def test_bootstrap_ci_width_matches_normal_theory_in_both_degenerate_layouts():
    rng = np.random.default_rng(11)
    flags = (rng.random(400) < 0.3).astype(float)
    se = math.sqrt(flags.mean() * (1 - flags.mean()) / flags.size)
    # one prompt with 400 images (only images vary), 400 prompts with one image (only prompts)
    for keys in (np.zeros(400), np.arange(400)):
        est = S.mean_ci(*S.pad_by_prompt(keys, flags), np.random.default_rng(0), n_boot=4000)
        assert est.value == pytest.approx(flags.mean())
        assert est.hi - est.lo == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_parity_statistic_hand_value_and_all_unknown():
    codes, mask = S.pad_by_prompt([0, 0, 0, 0, 1, 1, 1, 1], np.array([0, 0, 1, -1, 0, 1, 1, 1]))
    stat = S.parity_statistic(2, ["parity_l2", "max_min_gap"])
    # prompt 0: (2/3, 1/3); prompt 1: (1/4, 3/4)
    np.testing.assert_allclose(stat(codes, mask),
                               [math.sqrt(2) * (1 / 6 + 1 / 4) / 2, (1 / 3 + 1 / 2) / 2])
    ests = S.bootstrap(np.full_like(codes, -1), mask, stat, np.random.default_rng(0))
    assert len(ests) == 2 and all(math.isnan(e.value) and math.isnan(e.lo) for e in ests)


def test_wilcoxon_p_hand_computed_exact_values():
    assert S.wilcoxon_p(np.array([1.0, 2, 3, 4, 5])) == pytest.approx(2 / 32)
    # |d| ranks 1..7, W- = 1 + 4 = 5; #{subsets of 1..7 with sum <= 5} = 10 -> 2 * 10 / 128
    assert S.wilcoxon_p(np.array([1, -2, 3, 4, 5, 0.5, -0.1])) == pytest.approx(20 / 128)
    assert S.wilcoxon_p(np.array([1.0, 0, 2, 0])) == pytest.approx(2 / 4)  # zeros dropped
    assert S.wilcoxon_p(np.zeros(4)) == 1.0
    assert math.isnan(S.wilcoxon_p(np.array([np.nan])))


@pytest.mark.parametrize("d", [[0.5, 0.5, -0.5, 0.25, 0.25, 0.25], [-1.0] * 6,
                               [0.2, 0.2, 0.4, -0.4, 0.6, 0.6, 0.6, 0.8, -0.2]])
def test_wilcoxon_p_with_ties_matches_scipy_permutation(d):
    ref = sps.wilcoxon(d, method=sps.PermutationMethod()).pvalue  # exact: 2^n <= 9999 resamples
    assert S.wilcoxon_p(np.array(d)) == pytest.approx(ref)


def test_paired_comparison_per_prompt_differences():
    d = np.array([0.4, 0.1, 0.3, 0.2, 0.5, -0.05])
    base = np.random.default_rng(0).random((6, 3))
    method = base + d[:, None]  # every image of prompt i is shifted by d_i
    values = np.stack([method, base], -1)
    mask = np.ones((6, 3), bool)
    fit, = S.paired_comparison(values, mask, lambda v, m: S.prompt_mean(v, m)[..., None],
                               np.random.default_rng(1))
    assert fit.diff.value == pytest.approx(d.mean()) and fit.n_prompts == 6
    assert fit.p_value == pytest.approx(sps.wilcoxon(d).pvalue)
    assert fit.p_value == pytest.approx(2 * 2 / 64)  # W- = 1 (rank of 0.05): 2 subsets
    assert d.min() <= fit.diff.lo < d.mean() < fit.diff.hi <= d.max()
    same, = S.paired_comparison(np.stack([base, base], -1), mask,
                                lambda v, m: S.prompt_mean(v, m)[..., None],
                                np.random.default_rng(1))
    assert (same.diff.value, same.diff.lo, same.diff.hi, same.p_value) == (0, 0, 0, 1)


def test_holm_and_bh_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04; Holm 4p, 3p, 2p, 1p = .02 .03 .06 .04 -> cummax
    np.testing.assert_allclose(S.holm(p), [0.03, 0.06, 0.06, 0.02])
    # BH m p / rank = .02 .02 .04 .04 -> reverse cummin
    np.testing.assert_allclose(S.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(S.holm([0.5, 0.6]), [1.0, 1.0])  # clipped at 1
    np.testing.assert_allclose(S.benjamini_hochberg([0.5, 0.6]), [0.6, 0.6])
    out = S.holm([0.02, np.nan, 0.01])  # NaN left out: m = 2
    np.testing.assert_allclose(out, [0.02, np.nan, 0.02])
    assert S.holm([]).size == 0


def test_expected_max_matches_hand_value_and_closed_form():
    x = np.array([0.0, 0.5, 1.0])  # 2-subsets: maxima .5, 1, 1
    mean, std = S.expected_max(x, np.random.default_rng(0), k=2)
    assert mean == pytest.approx(2.5 / 3, abs=0.01)
    assert std == pytest.approx(math.sqrt(2.25 / 3 - (2.5 / 3) ** 2), abs=0.01)
    assert S.expected_max_exact(x, k=2) == pytest.approx(2.5 / 3)
    y = np.random.default_rng(5).random(300)
    mean, std = S.expected_max(y, np.random.default_rng(1), k=25)
    assert mean == pytest.approx(S.expected_max_exact(y, 25), abs=4 * std / 100)


def test_expected_max_draws_without_replacement():
    # k = P: every draw is a permutation, so the max is always the global max
    x = np.array([0.0, 0.1, 0.2, 0.3, 0.9])
    for k in (5, 50):  # 50 > P: every draw is the whole set
        assert S.expected_max(x, np.random.default_rng(0), k=k, draws=500) == pytest.approx(
            (0.9, 0.0), abs=1e-12)
    assert all(math.isnan(v) for v in S.expected_max(np.array([np.nan]), np.random.default_rng(0)))


def test_prompt_rates():
    flags, mask = S.pad_by_prompt(["a", "a", "b", "b", "b"], np.array([1.0, 0, 1, 1, np.nan]))
    np.testing.assert_allclose(S.prompt_rates(flags, mask), [0.5, 1.0])
