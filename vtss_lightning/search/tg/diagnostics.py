"""TG-VTSS diagnostics: is the task locally symmetric, and how biased is the generator?

The theory-guided refinement of VTSS (Ma & Zhang, arXiv 2601.16120, "TG-VTSS")
replaces the fixed ratio grid by one chosen from two statistics of a pilot model
trained on the real training rows, each step in its own module:

1. :mod:`~vtss_lightning.search.tg.head_stats`: the pilot's last-layer design
   ``x~ = (phi(x), 1)``, the balanced head (:mod:`~vtss_lightning.search.tg.head_fit`)
   and the class scores at it;
2. :mod:`~vtss_lightning.search.tg.symmetry`: a Wald test of *local symmetry*
   (``g_phi = 0``: imbalance is not the leading error, so only a small synthetic
   size can help);
3. :mod:`~vtss_lightning.search.tg.quality`: when the test rejects, the cross-fitted
   generator-quality score (GQS) and the alignment ``rho`` of the generator's
   mismatch with the class shift;
4. :mod:`~vtss_lightning.search.tg.grid`: the grid they imply, around the theory's
   best size ``n~* = gap / (1 - 2 rho)``; when the test or the GQS is within one
   standard error of its threshold, the grid joins both sides' candidates (and the
   diagnostics say why) instead of betting on one.

Everything works on the pilot's *last* ``nn.Linear`` layer, as the paper does for
non-linear models, so any torch classifier is supported; for
``TabularClassifier(hidden_dims=[])`` the features are the inputs and the statistics
are those of exact logistic regression. Binary tasks only. Class 1 in the formulas
is the class with fewer training rows, whatever its label; ``n0``, ``n1`` and
``gap = n0 - n1`` are real training counts of the active split. Only that split's
real *training* rows (and synthetic rows from generators fitted on them) are read;
validation and test rows are not touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from vtss_lightning._random import round_half_up, seeded
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.tg.grid import SYMMETRIC_RATIOS, tg_candidate_ratios, theory_target
from vtss_lightning.search.tg.head_fit import check_head_loss, pilot_head_loss
from vtss_lightning.search.tg.head_stats import pilot_statistics
from vtss_lightning.search.tg.quality import REALISTIC, GeneratorQuality, generator_quality
from vtss_lightning.search.tg.symmetry import (
    CALIBRATED,
    CHI2,
    SYMMETRIC,
    TESTS,
    SymmetryTest,
    symmetry_test,
)


# --------------------------------------------------------------------------- result
@dataclass
class TGDiagnostics:
    """What the TG-VTSS pre-analysis found, and the grid it implies.

    Attributes
    ----------
    regime
        ``"local symmetry"`` (the test's statistic at or below its cutoff) or
        ``"local asymmetry"``.
    generator_quality
        ``"realistic"`` (GQS <= tau) or ``"biased"``; ``None`` under (clear) local
        symmetry, where the GQS is not needed (and not computed).
    t_sym, cutoff, df, alpha
        The paper's Wald statistic ``g_phi' V^-1 g_phi``; the cutoff of the test that
        ran (on ``statistic``'s scale); the head's number of parameters; the level.
    test, statistic, p_value, df_num, df_den, statistic_se
        Which symmetry test decided (``"calibrated"`` or ``"chi2"``,
        :mod:`~vtss_lightning.search.tg.symmetry`), its statistic (``chi2``: the
        Wald ``T``; ``calibrated``: ``Q``, null mean 1), p-value, reference degrees
        of freedom (``df_den`` ``None``: chi-square) and the statistic's standard error.
    chi2_cutoff
        The ``chi2_df`` quantile of the paper's test, for ``t_sym``.
    gqs, cosine, rho, gqs_se, gqs_noise
        Generator-quality score, cosine and projection coefficient of the mismatch
        ``delta`` on ``g_phi``, the GQS's standard error and the part of it that
        ``delta``'s estimation noise alone explains; ``None`` under local symmetry.
    theory_target
        ``n~* = gap / (1 - 2 rho)`` in synthetic rows; ``inf`` when ``rho >= 1/2`` (no
        finite size cancels the bias), ``None`` under local symmetry.
    weak_evidence
        Why the grid joins both sides' candidates (empty: it did not): the test or
        the GQS within one standard error of its threshold.
    head_loss
        The loss the head was refitted with (``"log"``, ``"squared"``, ``"squared_pm"``).
    gap
        ``n0 - n1`` on the active split's training rows.
    candidate_ratios
        The TG grid as shares of the gap, sorted: what the search engine consumes.
    tau
        GQS threshold between a realistic and a biased generator.
    notes
        Caveats met on the way (rank-deficient features, a near-separable pilot, ...).
    """

    regime: str
    generator_quality: str | None
    t_sym: float
    cutoff: float
    df: int
    alpha: float
    gqs: float | None
    cosine: float | None
    rho: float | None
    theory_target: float | None
    gap: int
    candidate_ratios: list[float]
    tau: float = 10.0
    notes: list[str] = field(default_factory=list)
    test: str = CHI2
    statistic: float | None = None
    p_value: float | None = None
    df_num: float | None = None
    df_den: float | None = None
    statistic_se: float | None = None
    chi2_cutoff: float | None = None
    gqs_se: float | None = None
    gqs_noise: float | None = None
    weak_evidence: list[str] = field(default_factory=list)
    head_loss: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (non-finite numbers become ``None``).

        Keys: the attributes, plus ``"candidates"``: the grid in rows,
        ``[{"ratio": r, "rows": round(r * gap)}, ...]``.
        """
        return {
            "regime": self.regime,
            "generator_quality": self.generator_quality,
            "test": self.test,
            "statistic": _finite(self.statistic),
            "cutoff": _finite(self.cutoff),
            "p_value": _finite(self.p_value),
            "df_num": _finite(self.df_num),
            "df_den": _finite(self.df_den),
            "statistic_se": _finite(self.statistic_se),
            "t_sym": _finite(self.t_sym),
            "chi2_cutoff": _finite(self.chi2_cutoff),
            "df": int(self.df),
            "alpha": _finite(self.alpha),
            "gqs": _finite(self.gqs),
            "gqs_se": _finite(self.gqs_se),
            "gqs_noise": _finite(self.gqs_noise),
            "cosine": _finite(self.cosine),
            "rho": _finite(self.rho),
            "theory_target": _finite(self.theory_target),
            "gap": int(self.gap),
            "tau": _finite(self.tau),
            "candidate_ratios": [float(r) for r in self.candidate_ratios],
            "candidates": [
                {"ratio": float(r), "rows": round_half_up(r * self.gap)}
                for r in self.candidate_ratios
            ],
            "weak_evidence": list(self.weak_evidence),
            "head_loss": self.head_loss,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """Two or three lines for logs: regime and test, generator quality and target, grid.

        When the evidence is weak the grid line says so, and why.
        """
        lines = [f"TG-VTSS: {self.regime} ({self._test_clause()})"]
        if self.gqs is not None:
            lines.append(self._quality_line())
        elif self.regime == SYMMETRIC:
            lines.append("imbalance is not the leading error: trying no or few synthetic rows")
        else:
            lines.append("no generator-quality score (no gap to fill)")
        r = self.candidate_ratios
        grid = f"grid: {len(r)} ratios of the gap from {r[0]:g} to {r[-1]:g}"
        if self.weak_evidence:
            grid += "; weak evidence, so it joins both sides' candidates: " + "; ".join(
                self.weak_evidence
            )
        lines.append(grid)
        return "\n".join(lines)

    def _test_clause(self) -> str:
        rel = "<=" if self.regime == SYMMETRIC else ">"
        stat = self.t_sym if self.statistic is None else self.statistic
        if self.test == CALIBRATED:
            ref = f"F({_num(self.df_num)}, {_num(self.df_den, 'inf')})"
            name = "Q"
        else:
            ref, name = f"chi2_{self.df}", "Wald T"
        clause = (
            f"{self.test} test: {name} = {stat:.4g} {rel} cutoff {self.cutoff:.4g} ({ref}) "
            f"at alpha = {self.alpha:g}"
        )
        if self.p_value is not None:
            clause += f", p = {self.p_value:.3g}"
        if self.test != CHI2:
            clause += f"; Wald T = {self.t_sym:.4g}"
        return clause

    def _quality_line(self) -> str:
        if self.theory_target is None:
            target = "theory target undefined"
        elif math.isfinite(self.theory_target):
            share = self.theory_target / self.gap if self.gap else math.nan
            target = f"theory target n~* = {self.theory_target:,.0f} rows ({share:.3g} x gap {self.gap:,})"
        else:
            target = "rho >= 1/2: no finite size cancels the generator's bias"
        se = "" if self.gqs_se is None else f" (SE {self.gqs_se:.2g})"
        return (
            f"generator {self.generator_quality} (GQS = {self.gqs:.4g}{se} "
            f"{'<=' if self.generator_quality == REALISTIC else '>'} tau = {self.tau:g}; "
            f"rho = {self.rho:.3g}, cos = {self.cosine:.3g}); {target}"
        )


def _num(v: float | None, missing: str = "?") -> str:
    return missing if v is None or not math.isfinite(v) else f"{v:.3g}"


def _finite(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------- driver
class _Counts(NamedTuple):
    minority: int  # label index of the class with fewer training rows
    n0: int
    n1: int

    @property
    def gap(self) -> int:
        return self.n0 - self.n1


def tg_diagnostics(
    pilot: nn.Module,
    dm,
    alpha: float = 0.05,
    tau: float = 10.0,
    folds: int = 3,
    seed: int = 0,
    test: str = CALIBRATED,
    head_loss: str | None = None,
    join_weak: bool = True,
) -> TGDiagnostics:
    """Symmetry test, generator-quality score and TG grid for a trained pilot.

    Parameters
    ----------
    pilot
        A classifier trained on the real training rows (any ``nn.Module`` whose
        output layer is an ``nn.Linear``). Only its penultimate features are used;
        the head is refitted here with balanced weights, so the pilot's own head and
        its training objective do not matter. It is put in eval mode for the
        forward passes and restored after.
    dm
        A set-up :class:`SyntheticAugmentationDataModule` with two classes; its
        active split's real training rows and its generator template are used.
    alpha
        Level of the test of local symmetry.
    tau
        GQS threshold: ``GQS <= tau`` is a realistic generator.
    folds
        Cross-fitting folds over the minority training rows for the GQS.
    seed
        Seeds the fold assignment, the generator fits and draws.
    test
        ``"calibrated"`` (default: the Box-type test with data-driven degrees of
        freedom) or ``"chi2"`` (the paper's Wald test against ``chi2_df``); see
        :mod:`~vtss_lightning.search.tg.symmetry`.
    head_loss
        The loss the head is refitted with: ``None`` reads it from the pilot
        (:func:`~vtss_lightning.search.tg.head_fit.pilot_head_loss`); ``"log"``,
        ``"squared"`` (0/1 targets) or ``"squared_pm"`` (+-1 targets).
    join_weak
        When the test or the GQS is within one standard error of its threshold,
        search both sides' candidates (``False``: the paper's rule, one side only).
        ``test="chi2", join_weak=False`` is the paper's TG-VTSS.
    """
    _check_settings(alpha, tau, folds, test)
    split = _binary_split(dm)
    data_device = split.x_train.device
    device = torch.device("cpu") if data_device.type == "mps" else data_device  # no float64
    y = split.y_train.to(device)
    counts = _class_counts(y, folds)
    yb = (y == counts.minority).to(torch.float64)
    loss = pilot_head_loss(pilot) if head_loss is None else check_head_loss(head_loss)
    with seeded(seed):
        stats = pilot_statistics(pilot, split.x_train, yb, loss, device)
        sym = symmetry_test(stats.s0, stats.s1, stats.df, alpha, test)
        weak_test = join_weak and sym.weak
        if (sym.symmetric and not weak_test) or counts.gap <= 0:
            if counts.gap <= 0:
                stats.notes.append("the classes are balanced (gap 0): no synthetic rows are needed")
            return _without_generator(sym, counts.gap, tau, stats.notes, loss)
        quality = generator_quality(pilot, dm, split, stats, yb == 1, folds, seed)
    return _with_generator(sym, quality, counts.gap, tau, stats.notes, loss, join_weak)


def _check_settings(alpha: float, tau: float, folds: int, test: str = CALIBRATED) -> None:
    if not 0 < alpha < 1:
        raise VTSSError(f"alpha must be in (0, 1), got {alpha}")
    if not tau > 0:
        raise VTSSError(f"tau must be > 0, got {tau}")
    if int(folds) != folds or folds < 2:
        raise VTSSError(f"folds must be an integer >= 2, got {folds}")
    if test not in TESTS:
        raise VTSSError(f"test must be one of {', '.join(TESTS)}, got {test!r}")


def _binary_split(dm):
    """The DataModule's active split, refused unless it is set up and binary."""
    split = getattr(dm, "active", None)
    if split is None:
        raise VTSSError("the DataModule is not set up yet; call setup() before TG-VTSS")
    if dm.num_classes != 2:
        raise VTSSError(
            f'grid="tg" supports binary tasks only; this task has {dm.num_classes} classes '
            "(use a ratio grid)"
        )
    return split


def _class_counts(y: torch.Tensor, folds: int) -> _Counts:
    """Majority and minority training counts; every fold needs a minority row."""
    counts = torch.bincount(y, minlength=2).tolist()
    minority = 1 if counts[1] <= counts[0] else 0
    n0, n1 = counts[1 - minority], counts[minority]
    if n1 < max(2, folds):
        raise VTSSError(f"TG-VTSS needs at least {max(2, folds)} minority training rows, got {n1}")
    return _Counts(minority, n0, n1)


def weak_test_reason(test: SymmetryTest) -> str:
    """Why a symmetry test near its cutoff is weak evidence (one clause)."""
    return (
        f"the {test.test} symmetry test is within one standard error of its cutoff "
        f"(statistic {test.statistic:.3g}, cutoff {test.cutoff:.3g}, SE {test.se:.2g}; "
        f"p = {test.p_value:.3g} vs alpha = {test.alpha:g})"
    )


def weak_quality_reason(quality: GeneratorQuality, tau: float) -> str:
    """Why a GQS near ``tau`` is weak evidence (one clause)."""
    return (
        f"the GQS is within one standard error of tau (GQS {quality.gqs:.3g}, "
        f"tau {tau:g}, SE {quality.se:.2g})"
    )


def _from_test(
    test: SymmetryTest, gap: int, tau: float, notes: list[str], loss: str, **regime
) -> TGDiagnostics:
    """The diagnostics of a symmetry test, with the regime-specific fields in ``regime``."""
    return TGDiagnostics(
        t_sym=test.t_sym,
        cutoff=test.cutoff,
        df=test.df,
        alpha=test.alpha,
        gap=gap,
        tau=float(tau),
        notes=notes,
        test=test.test,
        statistic=test.statistic,
        p_value=test.p_value,
        df_num=test.df_num,
        df_den=test.df_den,
        statistic_se=test.se,
        chi2_cutoff=test.chi2_cutoff,
        head_loss=loss,
        **regime,
    )


def _without_generator(
    test: SymmetryTest, gap: int, tau: float, notes: list[str], loss: str
) -> TGDiagnostics:
    """Local symmetry (or no gap): the small grid, no GQS."""
    return _from_test(
        test, gap, tau, notes, loss,
        regime=test.regime, generator_quality=None, gqs=None, cosine=None, rho=None,
        theory_target=None, candidate_ratios=list(SYMMETRIC_RATIOS),
    )  # fmt: skip


def _with_generator(
    test: SymmetryTest,
    quality: GeneratorQuality,
    gap: int,
    tau: float,
    notes: list[str],
    loss: str,
    join_weak: bool = True,
) -> TGDiagnostics:
    """Local asymmetry (or a weak symmetry verdict): the grid around balance and ``n~*``."""
    target = theory_target(gap, quality.rho)
    verdict = quality.verdict(tau)
    share = target / gap if math.isfinite(target) else None
    weak_test = join_weak and test.weak
    weak_quality = join_weak and quality.weak(tau)
    reasons = [weak_test_reason(test)] if weak_test else []
    if weak_quality:
        reasons.append(weak_quality_reason(quality, tau))
    grid = tg_candidate_ratios(test.regime, verdict, share, weak_test, weak_quality)
    return _from_test(
        test, gap, tau, notes, loss,
        regime=test.regime, generator_quality=verdict, gqs=quality.gqs, cosine=quality.cosine,
        rho=quality.rho, theory_target=target, candidate_ratios=grid,
        gqs_se=quality.se, gqs_noise=quality.noise, weak_evidence=reasons,
    )  # fmt: skip
