"""Generators: row counts, dtypes, seeding, categorical validity, SMOTE geometry, errors."""

from __future__ import annotations

import inspect
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import vtss_lightning
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators import (
    CTGANGenerator,
    DiffusionGenerator,
    GaussianCopulaGenerator,
    GaussianGenerator,
    JitterGenerator,
    RandomOversampler,
    SMOTEGenerator,
    SyntheticGenerator,
    TVAEGenerator,
)
from vtss_lightning.generators.smote import nearest_neighbours

# --------------------------------------------------------------------------- data

# Encoded matrix: 2 numeric columns, a 3-level and a 2-level one-hot group.
SCHEMA = FeatureSchema(
    n_features=7,
    numeric=(0, 1),
    categorical_groups=((2, 3, 4), (5, 6)),
)


def encoded_rows(n: int = 60, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    num = torch.randn(n, 2, generator=g)
    a = torch.nn.functional.one_hot(torch.randint(3, (n,), generator=g), 3)
    b = torch.nn.functional.one_hot(torch.randint(2, (n,), generator=g), 2)
    return torch.cat([num, a.float(), b.float()], dim=1)


def raw_frame(n: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "x_nan": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
            "count": rng.integers(0, 5, n),
            "ident": np.arange(n) * 3,  # all-unique ints: SDV's detection calls this an id
            "flag": rng.random(n) < 0.5,
            "colour": rng.choice(["red", "green", "blue"], n),
            "size": pd.Categorical(rng.choice(["S", "L"], n)),
        }
    )


TENSOR_GENERATORS = {
    "smote": lambda: SMOTEGenerator(k_neighbors=3),
    "jitter": lambda: JitterGenerator(scale=0.3),
    "gaussian": lambda: GaussianGenerator(shrinkage=0.1),
}
FRAME_GENERATORS = {
    "gaussian_copula": lambda: GaussianCopulaGenerator(),
    "ctgan": lambda: CTGANGenerator(epochs=2, batch_size=20),
    "tvae": lambda: TVAEGenerator(epochs=2, batch_size=20),
}


@pytest.fixture(params=sorted(TENSOR_GENERATORS))
def tensor_gen(request) -> SyntheticGenerator:
    return TENSOR_GENERATORS[request.param]().fit(encoded_rows(), SCHEMA, seed=0)


@pytest.fixture(scope="module")
def frame_data() -> pd.DataFrame:
    return raw_frame()


@pytest.fixture(scope="module")
def fitted_frames(frame_data) -> dict[str, SyntheticGenerator]:
    """Each SDV generator fitted once (seed 0) and shared: SDV fits are the slow part."""
    return {name: make().fit(frame_data, seed=0) for name, make in FRAME_GENERATORS.items()}


@pytest.fixture(params=sorted(FRAME_GENERATORS))
def frame_gen(request, fitted_frames) -> SyntheticGenerator:
    return fitted_frames[request.param]


def rng_snapshot():
    return (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())


def same_rng(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


# ------------------------------------------------------------ tensor generators


@pytest.mark.parametrize("n", [0, 1, 17, 250])
def test_tensor_row_counts_shape_dtype(tensor_gen, n):
    out = tensor_gen.sample(n, generator_seed=1)
    assert out.shape == (n, 7)
    assert out.dtype == torch.float32
    assert out.device.type == "cpu"
    assert torch.isfinite(out).all()


def test_tensor_seeding(tensor_gen):
    a = tensor_gen.sample(100, generator_seed=7)
    assert torch.equal(a, tensor_gen.sample(100, generator_seed=7))
    assert not torch.equal(a, tensor_gen.sample(100, generator_seed=8))


def test_tensor_sampling_leaves_global_rng_alone(tensor_gen):
    before = rng_snapshot()
    tensor_gen.sample(50, generator_seed=3)
    assert same_rng(before, rng_snapshot())


def test_tensor_one_hot_groups_are_valid(tensor_gen):
    out = tensor_gen.sample(500, generator_seed=2)
    for group in SCHEMA.categorical_groups:
        block = out[:, list(group)]
        assert set(block.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(block.sum(dim=1), torch.ones(500))


@pytest.mark.parametrize("name", sorted(TENSOR_GENERATORS))
def test_tensor_sample_before_fit_raises(name):
    with pytest.raises(VTSSError, match="before fit"):
        TENSOR_GENERATORS[name]().sample(3, generator_seed=0)


def test_negative_n_raises(tensor_gen):
    with pytest.raises(VTSSError):
        tensor_gen.sample(-1, generator_seed=0)


@pytest.mark.parametrize(
    ("make", "rows"),
    [(SMOTEGenerator, 1), (GaussianGenerator, 1), (JitterGenerator, 0)],
)
def test_tensor_too_few_rows(make, rows):
    with pytest.raises(VTSSError, match="at least"):
        make().fit(encoded_rows(rows), SCHEMA)


@pytest.mark.parametrize("name", sorted(TENSOR_GENERATORS))
def test_tensor_bad_inputs(name):
    gen = TENSOR_GENERATORS[name]()
    with pytest.raises(VTSSError, match="schema"):
        gen.fit(encoded_rows(), FeatureSchema.all_numeric(5))
    x = encoded_rows()
    x[3, 0] = float("nan")
    with pytest.raises(VTSSError, match="NaN"):
        gen.fit(x, SCHEMA)


def test_tensor_fit_without_schema_is_all_numeric():
    x = torch.randn(20, 3)
    for make in TENSOR_GENERATORS.values():
        assert make().fit(x).sample(5, generator_seed=0).shape == (5, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(TENSOR_GENERATORS))
def test_tensor_cuda_matches_cpu(name):
    x = encoded_rows()
    cpu = TENSOR_GENERATORS[name]().fit(x, SCHEMA).sample(300, generator_seed=4)
    gen = TENSOR_GENERATORS[name]().to("cuda").fit(x, SCHEMA)
    out = gen.sample(300, generator_seed=4)
    assert out.device.type == "cuda"
    out = out.cpu()
    torch.testing.assert_close(out[:, :2], cpu[:, :2], atol=1e-4, rtol=1e-4)
    # one-hot blocks: argmax may flip on a near tie after float differences
    assert (out[:, 2:] == cpu[:, 2:]).all(dim=1).float().mean() > 0.98


# ------------------------------------------------------------------------ SMOTE


def point_to_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(p - (a + t * ab)))


def test_smote_samples_lie_on_segments_to_nearest_neighbours():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [5.0, 0.5]])
    k = 2
    gen = SMOTEGenerator(k_neighbors=k).fit(x)
    pts = x.numpy()
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    knn = np.argsort(dist, axis=1)[:, :k]
    segments = [(i, j) for i in range(len(pts)) for j in knn[i]]
    for p in gen.sample(400, generator_seed=0).double().numpy():
        best = min(point_to_segment(p, pts[i], pts[j]) for i, j in segments)
        assert best < 1e-5, p


def test_smote_categorical_blocks_come_from_real_rows():
    x = encoded_rows(40)
    out = SMOTEGenerator(k_neighbors=4).fit(x, SCHEMA).sample(300, generator_seed=1)
    for group in SCHEMA.categorical_groups:
        real = {tuple(r) for r in x[:, list(group)].tolist()}
        assert {tuple(r) for r in out[:, list(group)].tolist()} <= real


def test_smote_reduces_k_with_warning():
    gen = SMOTEGenerator(k_neighbors=5)
    with pytest.warns(UserWarning, match=r"3 rows.*from 5 to 2"):
        gen.fit(encoded_rows(3), SCHEMA)
    assert gen.k_ == 2
    assert gen.sample(10, generator_seed=0).shape == (10, 7)


def test_smote_no_warning_when_k_fits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SMOTEGenerator(k_neighbors=5).fit(encoded_rows(6), SCHEMA).k_ == 5


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3"])
def test_smote_bad_k(k):
    with pytest.raises(VTSSError, match="k_neighbors"):
        SMOTEGenerator(k_neighbors=k)


def test_nearest_neighbours_chunked_equals_unchunked():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(3))
    full = nearest_neighbours(x, 4)
    assert torch.equal(full, nearest_neighbours(x, 4, max_block=7))
    assert not (full == torch.arange(50).unsqueeze(1)).any()


# ----------------------------------------------------------------------- jitter


def test_jitter_scale_zero_duplicates_real_rows():
    x = encoded_rows(25)
    out = JitterGenerator(scale=0.0).fit(x, SCHEMA).sample(200, generator_seed=0)
    assert {tuple(r) for r in out.tolist()} <= {tuple(r) for r in x.tolist()}


def test_jitter_noise_is_on_numeric_columns_only():
    x = encoded_rows(1)
    out = JitterGenerator(scale=0.5).fit(x, SCHEMA).sample(20_000, generator_seed=0)
    assert torch.equal(out[:, 2:], x[:, 2:].expand(20_000, -1))
    torch.testing.assert_close(out[:, :2].std(dim=0), torch.full((2,), 0.5), atol=0.02, rtol=0)
    torch.testing.assert_close(out[:, :2].mean(dim=0), x[0, :2], atol=0.02, rtol=0)


@pytest.mark.parametrize("scale", [-0.1, float("nan"), float("inf"), "1"])
def test_jitter_bad_scale(scale):
    with pytest.raises(VTSSError, match="scale"):
        JitterGenerator(scale=scale)


# --------------------------------------------------------------------- Gaussian


def test_gaussian_reproduces_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.3, 0.2, 0.5]])
    x = torch.randn(400, 3, generator=g) @ mix.T + torch.tensor([1.0, -2.0, 0.5])
    gen = GaussianGenerator(shrinkage=0.0).fit(x)
    out = gen.sample(100_000, generator_seed=0).double()
    xd = x.double()
    torch.testing.assert_close(out.mean(0), xd.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(out.T), torch.cov(xd.T), atol=0.02, rtol=0)


def test_gaussian_shrinkage_formula():
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(1)) * torch.tensor(
        [1.0, 2.0, 0.5, 3.0]
    )
    s = 0.3
    gen = GaussianGenerator(shrinkage=s).fit(x)
    cov = torch.cov(x.double().T)
    expected = (1 - s) * cov + s * torch.trace(cov) / 4 * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(gen.covariance_, expected)
    # shrinkage keeps the total variance
    torch.testing.assert_close(torch.trace(gen.covariance_), torch.trace(cov))


@pytest.mark.parametrize("rows", [encoded_rows(3), encoded_rows(1).expand(4, -1).clone()])
def test_gaussian_singular_covariance_still_samples(rows):
    out = GaussianGenerator(shrinkage=0.0).fit(rows, SCHEMA).sample(50, generator_seed=0)
    assert out.shape == (50, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("s", [-0.1, 1.5, float("nan")])
def test_gaussian_bad_shrinkage(s):
    with pytest.raises(VTSSError, match="shrinkage"):
        GaussianGenerator(shrinkage=s)


# ------------------------------------------------------------------ SDV / frame


@pytest.mark.parametrize("n", [0, 1, 37])
def test_frame_row_counts_columns_dtypes(frame_gen, frame_data, n):
    out = frame_gen.sample(n, generator_seed=1)
    assert isinstance(out, pd.DataFrame)
    assert len(out) == n
    assert list(out.columns) == list(frame_data.columns)
    assert out.dtypes.equals(frame_data.dtypes)
    assert out.index.equals(pd.RangeIndex(n))


def test_frame_seeding(frame_gen):
    a = frame_gen.sample(40, generator_seed=5)
    pd.testing.assert_frame_equal(a, frame_gen.sample(40, generator_seed=5))
    assert not a.equals(frame_gen.sample(40, generator_seed=6))


def test_frame_only_seen_categories(frame_gen, frame_data):
    out = frame_gen.sample(200, generator_seed=2)
    assert set(out["colour"].dropna()) <= set(frame_data["colour"])
    assert set(out["size"].dropna()) <= set(frame_data["size"])
    assert list(out["size"].cat.categories) == list(frame_data["size"].cat.categories)
    assert set(out["flag"].unique()) <= {True, False}


def test_frame_rng_isolated(frame_data):
    before = rng_snapshot()
    gen = GaussianCopulaGenerator().fit(frame_data, seed=3)
    gen.sample(20, generator_seed=3)
    assert same_rng(before, rng_snapshot())


@pytest.mark.parametrize("name", ["ctgan", "tvae"])
def test_frame_fit_is_seeded(name, frame_data, fitted_frames):
    again = FRAME_GENERATORS[name]().fit(frame_data, seed=0)
    pd.testing.assert_frame_equal(
        again.sample(30, generator_seed=0), fitted_frames[name].sample(30, generator_seed=0)
    )


def test_frame_tiny_class_and_odd_columns():
    df = pd.DataFrame(
        {
            7: [1.5, 2.5, 3.0],  # non-string column name
            "empty": [np.nan] * 3,  # all-missing column
            "nullable": pd.array([1, None, 3], dtype="Int64"),
            "text": pd.array(["a", "b", None], dtype="string"),
        }
    )
    gen = CTGANGenerator(epochs=1, batch_size=500)
    assert gen.effective_batch_size(len(df)) == 10
    out = gen.fit(df, seed=0).sample(12, generator_seed=0)
    assert out.dtypes.equals(df.dtypes)
    assert list(out.columns) == [7, "empty", "nullable", "text"]
    assert out["empty"].isna().all()
    assert gen._synth._model._batch_size == 500  # sampling is not stuck at the clamped batch


def test_ctgan_batch_size_is_clamped():
    gen = CTGANGenerator(batch_size=500)
    assert [gen.effective_batch_size(n) for n in (2, 37, 1000)] == [10, 30, 500]
    assert CTGANGenerator(batch_size=64).effective_batch_size(1000) == 60


def test_copula_degenerate_beta_column_is_not_constant():
    # copulas' beta fit collapses this column to a point mass; the generator must notice.
    rng = np.random.default_rng(0)
    rng.normal(size=40), rng.random(40), rng.normal(size=40), rng.integers(0, 5, 40)
    rng.random(40), rng.choice(["a", "b", "c"], 40), rng.choice(["x", "y"], 40)
    rng.integers(0, 9, 40)
    df = pd.DataFrame({"v": rng.normal(size=40), "w": np.linspace(0, 1, 40)})
    out = GaussianCopulaGenerator().fit(df, seed=0).sample(500, generator_seed=0)
    assert out["v"].std() > 0.25 * df["v"].std()


@pytest.mark.parametrize("name", sorted(FRAME_GENERATORS))
def test_frame_errors(name, frame_data):
    gen = FRAME_GENERATORS[name]()
    with pytest.raises(VTSSError, match="before fit"):
        gen.sample(3, generator_seed=0)
    with pytest.raises(VTSSError, match="at least 2"):
        gen.fit(frame_data.iloc[:1])
    with pytest.raises(VTSSError, match="DataFrame"):
        gen.fit(torch.randn(10, 3))


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (CTGANGenerator, {"epochs": 0}, "epochs"),
        (CTGANGenerator, {"batch_size": 0}, "batch_size"),
        (CTGANGenerator, {"generator_dim": (0, 8)}, "generator_dim"),
        (CTGANGenerator, {"discriminator_dim": 16}, "discriminator_dim"),
        (TVAEGenerator, {"embedding_dim": -3}, "embedding_dim"),
        (TVAEGenerator, {"compress_dims": "128"}, "compress_dims"),
        (GaussianCopulaGenerator, {"default_distribution": "cauchy"}, "default_distribution"),
    ],
)
def test_frame_bad_params(make, kwargs, match):
    with pytest.raises(VTSSError, match=match):
        make(**kwargs)


def test_importing_generators_does_not_import_sdv():
    # Stub the parent packages so the check is about this package and stays fast
    # (``import vtss_lightning`` pulls in Lightning through the DataModule).
    root = Path(vtss_lightning.__file__).parent
    code = textwrap.dedent(
        f"""
        import sys, types
        for name, sub in [("vtss_lightning", ""), ("vtss_lightning.data", "data")]:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(__import__("pathlib").Path({str(root)!r}) / sub)]
            sys.modules[name] = pkg
        import vtss_lightning.generators
        assert "sdv" not in sys.modules and "ctgan" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reprs_name_parameters():
    assert repr(SMOTEGenerator(3)) == "SMOTEGenerator(k_neighbors=3)"
    assert "epochs=2" in repr(CTGANGenerator(epochs=2))
    assert CTGANGenerator.input_kind == "frame" and SMOTEGenerator.input_kind == "tensor"


#: A valid non-default value for the parameters whose type alone does not give one.
OTHER_VALUE = {
    "categorical": "argmax",
    "schedule": "linear",
    "precision": "32",
    "default_distribution": "norm",
    "unet": {"block_out_channels": (8, 16)},
    "scheduler": "ddpm",
    "beta_schedule": "linear",
}


def other_value(name: str, default: object) -> object:
    """A valid value of parameter ``name`` that differs from its ``default``."""
    if name in OTHER_VALUE:
        return OTHER_VALUE[name]
    if default is None:
        return 7  # every optional parameter takes a positive integer
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2 if default else 0.5
    if isinstance(default, tuple):
        return tuple(v + 1 for v in default)
    raise AssertionError(f"no other value known for {name}={default!r}")


GENERATOR_CLASSES = [
    getattr(vtss_lightning.generators, name)
    for name in vtss_lightning.generators.__all__
    if name != "SyntheticGenerator"
]


@pytest.mark.parametrize("cls", GENERATOR_CLASSES, ids=lambda c: c.__name__)
def test_params_and_repr_come_from_the_signature(cls):
    """Every ``__init__`` parameter is in ``get_params()`` and ``repr``, so changing any
    one of them changes both (the search fingerprints a generator by its ``repr``)."""
    signature = inspect.signature(cls.__init__).parameters
    names = [n for n in signature if n != "self"]
    default = cls()
    assert list(default.get_params()) == names
    assert default.get_params() == {n: signature[n].default for n in names}
    namespace = {c.__name__: c for c in GENERATOR_CLASSES}
    assert repr(eval(repr(default), namespace)) == repr(default)  # repr rebuilds it
    for name in names:
        changed = cls(**{name: other_value(name, signature[name].default)})
        assert changed.get_params() != default.get_params(), name
        assert repr(changed) != repr(default), name
        assert repr(eval(repr(changed), namespace)) == repr(changed), name


def test_repr_lists_every_parameter():
    assert repr(GaussianGenerator()) == "GaussianGenerator(shrinkage=0.1)"
    assert repr(RandomOversampler()) == "RandomOversampler()"
    assert repr(DiffusionGenerator(ema=0.9)) != repr(DiffusionGenerator())
    assert "ema=0.9," in repr(DiffusionGenerator(ema=0.9))
    assert DiffusionGenerator(steps=3).settings.steps == 3


def test_get_params_names_a_parameter_a_subclass_does_not_store():
    class Forgetful(SyntheticGenerator):
        def __init__(self, depth: int = 2) -> None:
            super().__init__()

        def _fit(self, x, schema, seed):
            pass

        def _sample(self, n, seed):
            return torch.zeros(n, 1)

    with pytest.raises(
        AttributeError, match=r"Forgetful does not store __init__ parameter\(s\) \['depth'\]"
    ):
        Forgetful().get_params()
