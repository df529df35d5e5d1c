"""Random masks are uniformly random k-subsets: statistical tests, seeded so they are deterministic.

Every random choice of the library (random init, SET's growth, block choices, ties among equal scores)
goes through the keyed tie order of ``topk_masks``. These tests compare what it picks with what a
uniformly random k-subset of the eligible positions does: per-row and per-column counts against the
(multivariate) hypergeometric law, per-position frequencies over many keys, overlaps of two keys'
masks, and gaps between consecutive picks against the geometric law. An affine order ``index * a + b``
(a Weyl lattice) fails each of them by a wide margin; a position-dependent bias would too.

Each test uses a fixed set of keys, and every check is two-sided with p in (1e-4, 1 - 1e-4), so that
too regular (the lattice) fails as surely as too irregular.
"""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _subprocess import run_script
from scipy import stats

from sparsejax import masks as mk
from sparsejax.algorithms.drop_grow import drop_and_grow

P_LO, P_HI = 1e-4, 1 - 1e-4


def _keys(n: int, base: int = 0) -> list[jax.Array]:
    return [jax.random.PRNGKey(base * 100_003 + i) for i in range(n)]


_random_mask = jax.jit(mk.random_mask, static_argnames=("shape", "block"))


def random_masks(shape: tuple[int, ...], k: int, n: int, base: int = 0) -> np.ndarray:
    """(n, *shape) bool: ``mk.random_mask`` for ``n`` keys."""
    return np.stack([np.asarray(_random_mask(key, shape, k)) for key in _keys(n, base)])


def dispersion_p(counts: np.ndarray, total: int, size: int) -> float:
    """Two-sided p of a multivariate hypergeometric dispersion test.

    ``counts`` (draws, cells): how many of ``k`` picks out of ``total`` positions fell in each of the
    equal-sized cells (``size`` positions each, e.g. rows). Pearson's statistic scaled by the finite
    population correction is ~ chi2(cells - 1) per draw; draws are independent, so the sum is chi2.
    """
    draws, cells = counts.shape
    k = counts.sum(axis=1)
    expected = k[:, None] * size / total
    correction = (total - 1) / (total - k[:, None])
    stat = float(np.sum((counts - expected) ** 2 / expected * correction))
    cdf = stats.chi2.cdf(stat, draws * (cells - 1))
    return float(min(cdf, 1 - cdf) * 2)


def frequency_p(hits: np.ndarray, draws: int, k: int) -> float:
    """Two-sided p that every one of ``hits.size`` positions is picked equally often over ``draws``
    independent uniform k-subsets (covariance p(1-p) N/(N-1) (I - 11^T/N) per draw)."""
    n = hits.size
    p = k / n
    stat = float(np.sum((hits - draws * p) ** 2) / (draws * p * (1 - p) * n / (n - 1)))
    cdf = stats.chi2.cdf(stat, n - 1)
    return float(min(cdf, 1 - cdf) * 2)


def pmf_fit_p(samples: np.ndarray, law, support: np.ndarray) -> float:
    """Two-sided chi-square goodness of fit of integer ``samples`` to the scipy distribution ``law``
    on ``support`` (its ends take the tails); neighbouring cells are merged until each expects >= 5."""
    n = len(samples)
    expected = law.pmf(support) * n
    expected[0], expected[-1] = law.cdf(support[0]) * n, law.sf(support[-1] - 1) * n
    observed = np.array([(samples == s).sum() for s in support], float)
    observed[0], observed[-1] = (samples <= support[0]).sum(), (samples >= support[-1]).sum()
    obs, exp, o, e = [], [], 0.0, 0.0
    for oi, ei in zip(observed, expected):
        o, e = o + oi, e + ei
        if e >= 5:
            obs.append(o), exp.append(e)
            o = e = 0.0
    obs[-1] += o
    exp[-1] += e
    stat = float(np.sum((np.array(obs) - np.array(exp)) ** 2 / np.array(exp)))
    cdf = stats.chi2.cdf(stat, len(obs) - 1)
    return float(min(cdf, 1 - cdf) * 2)


def gaps_p(picked_flat: np.ndarray, total: int) -> float:
    """Gaps between consecutive picks of a k-subset of ``total`` positions ~ geometric(k / total)."""
    idx = np.flatnonzero(picked_flat)
    gaps = np.diff(idx)
    p = len(idx) / total
    support = np.arange(1, int(np.ceil(12 / p)))
    return pmf_fit_p(gaps, stats.geom(p), support)


def assert_uniform(p: float, what: str) -> None:
    assert P_LO < p < P_HI, f"{what}: p = {p:.2e}"


@pytest.mark.parametrize(
    "shape,density",
    [((64, 48), 0.1), ((37, 29), 0.3), ((3, 3, 16, 32), 0.2), ((101,), 0.5)],
    ids=["dense", "odd", "conv", "vector"],
)
def test_row_and_column_counts_are_hypergeometric(shape, density):
    total = int(np.prod(shape))
    k = int(density * total)
    draws = random_masks(shape, k, 40)
    assert (draws.reshape(40, -1).sum(1) == k).all()  # exact counts
    if len(shape) == 1:  # a vector: counts in 1-element "rows" are the per-position test below
        cells = draws.reshape(40, -1, 1)
    else:
        cells = draws.reshape(40, -1, shape[-1])  # rows: all but the output axis
    rows, cols = cells.sum(axis=2), cells.sum(axis=1)
    if rows.shape[1] > 1:
        assert_uniform(dispersion_p(rows, total, cells.shape[2]), f"{shape} per-row counts")
    if cols.shape[1] > 1:
        assert_uniform(dispersion_p(cols, total, cells.shape[1]), f"{shape} per-column counts")
    # and the per-row histogram follows the hypergeometric pmf itself (not only its variance)
    if rows.shape[1] >= 8 and cells.shape[2] > 1:
        law = stats.hypergeom(total, cells.shape[2], k)
        support = np.arange(int(law.ppf(1e-6)), int(law.ppf(1 - 1e-6)) + 1)
        assert_uniform(pmf_fit_p(rows.ravel(), law, support), f"{shape} per-row histogram")


def test_every_position_equally_often_over_many_keys():
    shape, k, n = (8, 10), 20, 400
    hits = random_masks(shape, k, n, base=1).sum(axis=0)
    assert_uniform(frequency_p(hits, n, k), "position frequencies")


def test_two_keys_overlap_like_independent_draws():
    total, k, n = 32 * 32, 256, 300
    a = random_masks((32, 32), k, n, base=2).reshape(n, -1)
    # neighbouring keys (fold-ins of one seed, as the library derives its per-leaf keys) and far ones
    overlaps = (a[1:] & a[:-1]).sum(axis=1)
    law = stats.hypergeom(total, k, k)
    support = np.arange(int(law.ppf(1e-6)), int(law.ppf(1 - 1e-6)) + 1)
    assert abs(overlaps.mean() - k * k / total) < 4 * law.std() / np.sqrt(len(overlaps))
    assert_uniform(pmf_fit_p(overlaps, law, support), "overlaps of consecutive keys")
    sub = jax.random.PRNGKey(7)
    folded = [np.asarray(_random_mask(jax.random.fold_in(sub, i), (32, 32), k)) for i in range(60)]
    ov = np.array([(x & y).sum() for x, y in zip(folded[1:], folded[:-1])])
    assert_uniform(pmf_fit_p(ov, law, support), "overlaps of fold_in keys")


def test_gaps_between_actives_are_geometric():
    shape, density = (512, 512), 0.1
    total = 512 * 512
    m = random_masks(shape, int(density * total), 2, base=3)
    for one in m:
        gaps = np.diff(np.flatnonzero(one.ravel()))
        assert len(np.unique(gaps)) > 50  # a lattice has 3
        assert_uniform(gaps_p(one.ravel(), total), "gaps")
        rows = one.sum(axis=1)  # row std ~ binomial 6.8, not ~1 (the lattice)
        assert 0.85 < rows.std() / np.sqrt(512 * density * (1 - density)) < 1.15


def test_block_masks_are_uniform_over_blocks():
    shape, block, n = (64, 96), (8, 16), 200
    units = (64 // 8) * (96 // 16)  # 8 x 6 tiles
    k = 12
    ms = [np.asarray(_random_mask(key, shape, k, block)) for key in _keys(n, base=4)]
    tiles = np.stack([m[::8, ::16] for m in ms])  # one element per tile
    for m, t in zip(ms, tiles):  # whole tiles, exactly k of them
        np.testing.assert_array_equal(m, np.kron(t, np.ones(block, bool)))
        assert t.sum() == k
    assert_uniform(frequency_p(tiles.sum(0), n, k), "block frequencies")
    assert_uniform(dispersion_p(tiles.sum(axis=2), units, 6), "blocks per row")
    assert_uniform(dispersion_p(tiles.sum(axis=1), units, 8), "blocks per column")


def _grown(masks, params, grads, key, fraction, grow):
    return drop_and_grow(masks, params, grads if grow == "gradient" else None, key, fraction)


_grow = jax.jit(_grown, static_argnames="grow")


def _grown_among_eligible(
    grow: str, grads: np.ndarray, n: int, base: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draws of drop-and-grow on one (48, 40) leaf at 50% density with a fixed mask and weights:
    (n, eligible) bool, the grown picks mapped into the positions eligible for growth (inactive after
    the drop), and the (n,) numbers grown."""
    rng = np.random.default_rng(0)
    shape = (48, 40)
    mask = rng.random(shape) < 0.5
    w = (rng.random(shape) + 0.5) * mask  # distinct magnitudes: the drop is deterministic
    masks, params = {"w": jnp.asarray(mask)}, {"w": jnp.asarray(w, jnp.float32)}
    grads = {"w": jnp.asarray(grads, jnp.float32)}
    picks, eligible0 = [], None
    for key in _keys(n, base):
        upd = _grow(masks, params, grads, key, 0.25, grow)
        new, grown = np.asarray(upd.masks["w"]), np.asarray(upd.grown["w"])
        kept = new & ~grown
        eligible = ~kept
        eligible0 = eligible if eligible0 is None else eligible0
        np.testing.assert_array_equal(eligible, eligible0)  # the drop does not depend on the key
        assert new.sum() == mask.sum() and not (grown & kept).any()
        picks.append(grown[eligible])
    return np.stack(picks), eligible0


def test_set_regrowth_is_uniform_among_inactive_positions():
    shape = (48, 40)
    picks, eligible = _grown_among_eligible("random", np.zeros(shape), 300, base=5)
    k = int(picks[0].sum())
    assert k > 50 and (picks.sum(1) == k).all()
    assert_uniform(frequency_p(picks.sum(0), len(picks), k), "SET grow frequencies")
    for one in picks[:3]:  # gaps in the order of eligible positions
        assert_uniform(gaps_p(one, one.size), "SET grow gaps")
    # per row: the grown count of a row is multivariate hypergeometric over rows' eligible counts
    rows = np.stack([np.bincount(np.nonzero(eligible)[0][p], minlength=shape[0]) for p in picks])
    size = eligible.sum(1)
    e = rows.sum(1, keepdims=True) * size / size.sum()
    stat = np.sum((rows - e) ** 2 / e * (size.sum() - 1) / (size.sum() - k))
    cdf = stats.chi2.cdf(stat, len(picks) * (shape[0] - 1))
    assert_uniform(min(cdf, 1 - cdf) * 2, "SET grow per-row counts")


def test_rigl_ties_among_equal_gradients_are_broken_uniformly():
    # A few large gradients win for sure; the rest of the grown units tie at |g| = 0 (the usual case
    # right after a regrowth: zero-valued weights and, here, zero gradients) and must be uniform.
    shape = (48, 40)
    grads = np.zeros(shape)
    grads[np.arange(0, 40, 4), np.arange(0, 40, 4)] = 3.0  # 10 sure winners, inactive or not
    picks, eligible = _grown_among_eligible("gradient", grads, 300, base=6)
    sure = (grads != 0)[eligible]
    assert sure.sum() > 0 and picks[:, sure].all()  # the large gradients always grow
    ties = picks[:, ~sure]
    k = int(ties[0].sum())
    assert k > 50
    assert_uniform(frequency_p(ties.sum(0), len(ties), k), "RigL tie frequencies")
    for one in ties[:3]:
        assert_uniform(gaps_p(one, one.size), "RigL tie gaps")


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from sparsejax import masks as mk
    from sparsejax.algorithms.drop_grow import drop_and_grow

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "fsdp"))
    key = jax.random.PRNGKey(11)
    for shape, spec in [((64, 96), P(None, "fsdp")), ((96, 64), P("fsdp", "data")), ((3, 3, 8, 32), P(None, None, None, "fsdp"))]:
        sh = NamedSharding(mesh, spec)
        k = int(0.2 * np.prod(shape))
        ref = mk.random_mask(key, shape, k)
        got = jax.jit(lambda kk: mk.random_mask(kk, shape, k), out_shardings=sh)(key)
        assert got.sharding.spec == spec
        np.testing.assert_array_equal(np.asarray(ref), np.asarray(got))
        masks, w = {"w": ref}, {"w": jax.random.normal(key, shape) * ref}
        g = {"w": jnp.zeros(shape)}
        want = drop_and_grow(masks, w, None, key, 0.3).masks["w"]
        put = lambda t: jax.tree.map(lambda a: jax.device_put(a, sh), t)
        upd = jax.jit(lambda m, p, gg: drop_and_grow(m, p, None, key, 0.3).masks["w"])
        np.testing.assert_array_equal(np.asarray(want), np.asarray(upd(put(masks), put(w), put(g))))
    print("OK")
    """
)


def test_sharded_random_masks_equal_unsharded():
    run_script(SHARDED_SCRIPT, devices=8)
