from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from napari_histosge.expression import prepare_targets, select_genes


def _counts(n: int = 40, g: int = 60, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.5, 4.0, size=g)
    x = rng.poisson(lam[None, :] * rng.gamma(2.0, 0.5, size=(n, 1)))
    a = ad.AnnData(sp.csr_matrix(x.astype(np.float32)))
    a.var_names = [f"GENE{i}" for i in range(g)]
    return a


def test_normalise_over_all_genes_then_log1p_on_a_copy():
    a = _counts()
    before = a.X.copy()
    tg = prepare_targets(a, n_top_genes=10)
    assert tg.values.shape == (40, 10)
    assert tg.values.dtype == np.float32
    assert not tg.log_normalized_input
    assert (before != a.X).nnz == 0
    assert "log1p" not in a.uns
    x = a.X.toarray()
    j = list(a.var_names).index(tg.genes[0])
    np.testing.assert_allclose(tg.values[:, j * 0], np.log1p(x[:, j] / x.sum(1) * 1e4), rtol=1e-5)


def test_counts_layer_and_user_genes_and_unknown_genes():
    a = _counts()
    b = a.copy()
    b.layers["counts"] = b.X.copy()
    b.X = sp.csr_matrix(np.log1p(b.X.toarray()) + 0.5)
    np.testing.assert_allclose(
        prepare_targets(b, genes=["GENE3", "GENE1"]).values,
        prepare_targets(a, genes=["GENE3", "GENE1"]).values,
    )
    with pytest.raises(ValueError, match=r"unknown.*GENE_3.*close matches"):
        prepare_targets(a, genes=["GENE1", "GENE_3"])


def test_log_normalised_input_is_used_as_is_with_a_warning():
    a = _counts()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray() / 3.0))
    with pytest.warns(UserWarning, match="already log-normalised"):
        tg = prepare_targets(a, genes=["GENE0", "GENE5"])
    assert tg.log_normalized_input
    np.testing.assert_allclose(tg.values, a[:, ["GENE0", "GENE5"]].X.toarray(), rtol=1e-6)


def test_genes_chosen_on_training_spots_only():
    a = _counts(n=60)
    mask = np.arange(60) % 2 == 0
    chosen = select_genes(a, n_top_genes=5, fit_mask=mask)
    assert chosen == select_genes(a[mask].copy(), n_top_genes=5)
    assert len(set(chosen)) == 5


@pytest.mark.her2st
def test_real_her2st_section(shared_data):
    counts = pd.read_csv(
        shared_data / "her2st" / "data" / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0
    )
    a = ad.AnnData(sp.csr_matrix(counts.to_numpy(np.float32)))
    a.var_names = counts.columns.astype(str)
    a.var_names_make_unique()
    tg = prepare_targets(a, n_top_genes=50)
    assert tg.values.shape == (len(counts), 50)
    assert np.isfinite(tg.values).all()
    assert np.all(tg.values >= 0)
    assert tg.values.max() < np.log1p(1e4)


def test_flat_tables_fall_back_to_variance_ranking_with_a_warning():
    a = ad.AnnData(np.random.default_rng(0).poisson(2, (30, 50)).astype(np.float32))
    with pytest.warns(UserWarning, match="seurat_v3"):
        genes = select_genes(a, n_top_genes=10)
    assert len(genes) == 10
