"""The markdown of ``benchmarks/generators.py``: tables and a reading computed from them.

Every sentence of the reading states a number computed here from the per-split
results (means over splits, paired differences with their standard errors); the
target verdicts of issue 16 item 5 are decided by the rules written next to them.
"""

from __future__ import annotations

import math

import numpy as np

from vtss_lightning.search.selection import TIE_TOLERANCE

#: the images on which the conditional-vs-per-class target is judged
TARGET_IMAGES = ("digits_binary", "digits_multiclass")
#: the conditional rows of the target (their twins are the per-class rows)
TARGET_PAIRS = ("VAE (conditional)", "diffusion (conditional)")


def mean_se(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return float(a.mean()), se


def pm(values, digits: int = 4) -> str:
    m, se = mean_se(values)
    return f"{m:.{digits}f}" if math.isnan(se) else f"{m:.{digits}f} ± {se:.{digits}f}"


def signed(values, digits: int = 4) -> str:
    m, se = mean_se(values)
    return f"{m:+.{digits}f}" if math.isnan(se) else f"{m:+.{digits}f} ± {se:.{digits}f}"


def ok(runs: list) -> dict[int, dict]:
    """The splits a generator ran and finished on: ``{split: result}``."""
    return {s: r for s, r in enumerate(runs) if r is not None and "error" not in r}


def failures(runs: list) -> dict[int, str]:
    return {s: r["error"] for s, r in enumerate(runs) if r is not None and "error" in r}


def noise_word(values) -> str:
    """Whether a paired mean difference is beyond 2 standard errors."""
    m, se = mean_se(values)
    if math.isnan(se):
        return "one split: no error bar"
    return "beyond 2 SE" if abs(m) > 2 * se else "within 2 SE"


def kind_word(spec: dict) -> str:
    return "one per split" if spec["kind"] == "conditional" else "per class"


# ------------------------------------------------------------------ results


def failure(exc: BaseException) -> dict:
    """A failed run: its exception's type and first line."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {"error": f"{type(exc).__name__}: {reason}"[:200]}


def fidelity_auc(entry: dict | None) -> tuple[float | None, float | None]:
    """Mean logistic / 5-NN AUC over the classes of a report ``fidelity`` entry."""
    if not entry or not entry.get("classes"):
        return None, None
    out = []
    for key in ("auc", "knn_auc"):
        vals = [c[key] for c in entry["classes"].values() if c.get(key) is not None]
        out.append(float(np.mean(vals)) if vals else None)
    return out[0], out[1]


def joint_entries(labels: list[str], per_gen: list[dict]) -> list[dict]:
    """The joint search's ``diagnostics["generators"]``, one entry per listed generator
    (named by the benchmark's row labels, in the listed order)."""
    out = []
    for label, g in zip(labels, per_gen, strict=True):
        auc, knn = fidelity_auc(g.get("fidelity"))
        out.append(
            {
                "label": label,
                "report_label": g["generator"],
                "status": g.get("status", "ok"),
                "ratio": g.get("selected_ratio"),
                "val_loss": g.get("val_balanced_loss"),
                "val_auc": auc,
                "val_knn_auc": knn,
                "search_s": g.get("search_seconds"),
            }
        )
    return out


# ------------------------------------------------------------------ tables


def generator_table(res: dict, n_splits: int) -> list[str]:
    rows = res["rows"]
    lines = [
        f"| generator | fitted | fit (s) | rows/s ({rows:,} rows) | C2ST AUC logistic / 5-NN "
        "(n real) | VTSS γ̂ per split | balanced test log loss | search + final fit (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in res["specs"]:
        runs = res["singles"][spec["label"]]
        good, bad = ok(runs), failures(runs)
        name = spec["label"]
        if not good:
            reason = next(iter(bad.values()), "not run")
            lines.append(f"| {name} | {kind_word(spec)} | failed: {reason} | | | | | |")
            continue
        if bad:
            s, reason = next(iter(bad.items()))
            name += f" (failed on split {s}: {reason})"
        ratios = " / ".join(
            "–" if r is None else ("failed" if "error" in r else f"{r['ratio']:g}") for r in runs
        )
        v = list(good.values())
        lines.append(
            f"| {name} | {kind_word(spec)} | {np.mean([r['fit_s'] for r in v]):.2f} "
            f"| {np.mean([r['rows_per_s'] for r in v]):,.0f} "
            f"| {pm([r['auc'] for r in v], 3)} / {pm([r['knn_auc'] for r in v], 3)} "
            f"({round(np.mean([r['n_real'] for r in v]))}) | {ratios} "
            f"| {pm([r['test_loss'] for r in v])} | {np.mean([r['search_s'] for r in v]):.1f} |"
        )
    return lines


def listed(res: dict) -> list[str]:
    return [s["label"] for s in res["specs"] if s["joint"]]


def best_single(res: dict, labels: list[str], splits: list[int]) -> str | None:
    """The generator (of ``labels``) with the lowest mean test loss over ``splits``,
    counting only those that finished on every one of them."""
    means = {}
    for label in labels:
        good = ok(res["singles"][label])
        if splits and all(s in good for s in splits):
            means[label] = np.mean([good[s]["test_loss"] for s in splits])
    return min(means, key=means.get) if means else None


def replay_pick(res: dict, s: int) -> dict | None:
    """The joint search's pick on split ``s`` by its rule, from the single searches: the
    listed generator whose own pick has the lowest validation loss (ties: the smaller
    γ̂, then the one listed first). Exact when the joint repeats the single searches,
    which the splits it ran on check."""
    picks = []
    for i, label in enumerate(listed(res)):
        r = res["singles"][label][s]
        if r is not None and "error" not in r and r.get("val_loss") is not None:
            picks.append((i, label, r))
    if not picks:
        return None
    low = min(r["val_loss"] for _, _, r in picks)
    tied = [p for p in picks if p[2]["val_loss"] - low <= TIE_TOLERANCE * max(1.0, abs(low))]
    _, label, r = min(tied, key=lambda p: (p[2]["ratio"], p[0]))
    return {"generator": label, "ratio": r["ratio"], "test_loss": r["test_loss"], "replayed": True}


def real_joints(res: dict) -> list[tuple[int, dict]]:
    """The splits the joint search ran on (available or not)."""
    return [(s, j) for s, j in enumerate(res["joint"]) if not j.get("replay")]


def replay_matches(res: dict, s: int, j: dict) -> bool:
    pick = replay_pick(res, s)
    return (
        pick is not None
        and pick["generator"] == j["generator"]
        and close(pick["ratio"], j["ratio"])
    )


def resolved_joint(res: dict) -> list[dict]:
    """Per split: the joint search's result, or on the splits it did not run (``--joint-splits``)
    its replayed pick, trusted only when every split it ran on gave the replay's pick."""
    real = real_joints(res)
    trusted = bool(real) and all(
        "unavailable" not in j and replay_matches(res, s, j) for s, j in real
    )
    out = []
    for s, j in enumerate(res["joint"]):
        if not j.get("replay"):
            out.append(j)
        elif trusted:
            out.append(replay_pick(res, s) or {"unavailable": "no listed generator finished"})
        else:
            out.append(
                {
                    "unavailable": "not run (--joint-splits), and not replayed: the joint search "
                    "ran nowhere or its pick differed from the replay's"
                }
            )
    return out


def joint_comparison(res: dict) -> dict | None:
    """Joint vs the best single listed generator (and vs every row), paired per split."""
    joints = {s: j for s, j in enumerate(res["joint_all"]) if "unavailable" not in j}
    splits = sorted(joints)
    best = best_single(res, listed(res), splits)
    if not splits or best is None:
        return None
    every = best_single(res, [s["label"] for s in res["specs"]], splits)
    joint = [joints[s]["test_loss"] for s in splits]
    single = [ok(res["singles"][best])[s]["test_loss"] for s in splits]
    oracle = [
        min(
            ok(res["singles"][g])[s]["test_loss"] for g in listed(res) if s in ok(res["singles"][g])
        )
        for s in splits
    ]
    return {
        "splits": splits,
        "best": best,
        "best_all": every,
        "joint": joint,
        "single": single,
        "diff": [a - b for a, b in zip(joint, single, strict=True)],
        "oracle": oracle,
        "search_s": [joints[s]["search_s"] for s in splits if "search_s" in joints[s]],
        "replayed": [s for s in splits if joints[s].get("replayed")],
    }


def joint_section(res: dict) -> list[str]:
    names = ", ".join(listed(res))
    lines = [f"### Joint search: `generator=[{names}]`", ""]
    unavailable = [j["unavailable"] for j in res["joint_all"] if "unavailable" in j]
    if not res["joint"]:
        return [*lines, "Not run (`--no-joint`).", ""]
    if len(unavailable) == len(res["joint"]):
        return [*lines, f"| joint search unavailable: {unavailable[0]} |", "|---|", ""]
    cmp = joint_comparison(res)
    lines += [
        "| split | chosen (generator, γ̂) | balanced test log loss | best single listed "
        "generator's | joint − best single | best listed on this split | search + final fit "
        "(s), fits included |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, j in enumerate(res["joint_all"]):
        if "unavailable" in j:
            lines.append(f"| {s} | joint search unavailable: {j['unavailable']} | | | | | |")
            continue
        how = " (replayed)" if j.get("replayed") else ""
        took = "–" if j.get("replayed") else f"{j['search_s']:.1f}"
        single = oracle = diff = ""
        if cmp is not None and s in cmp["splits"]:
            i = cmp["splits"].index(s)
            single = f"{cmp['single'][i]:.4f}"
            diff = f"{cmp['diff'][i]:+.4f}"
            oracle = f"{cmp['oracle'][i]:.4f}"
        lines.append(
            f"| {s} | {j['generator']}, {j['ratio']:g}{how} | {j['test_loss']:.4f} | {single} "
            f"| {diff} | {oracle} | {took} |"
        )
    if cmp is not None:
        took = f"{np.mean(cmp['search_s']):.1f}" if cmp["search_s"] else "–"
        lines.append(
            f"| mean | best single: {cmp['best']} | {pm(cmp['joint'])} | {pm(cmp['single'])} "
            f"| {signed(cmp['diff'])} | {pm(cmp['oracle'])} | {took} |"
        )
    if any(j.get("replayed") for j in res["joint_all"]):
        lines += [
            "",
            "(replayed): the joint search ran on the splits without the mark; on the others "
            "its pick is replayed from the single searches by its rule (lowest validation "
            "loss of each generator's pick), which is exact when the joint repeats the single "
            "searches, as the splits it ran on check (see the reading).",
        ]
    lines += ["", *joint_generators_table(res), ""]
    return lines


def joint_generators_table(res: dict) -> list[str]:
    """Each listed generator inside the joint search, beside its own single search."""
    lines = [
        "| in the joint search | γ̂ per split (joint / alone) | validation balanced loss "
        "| C2ST AUC logistic / 5-NN (validation rows) | its search (s) |",
        "|---|---|---|---|---|",
    ]
    for label in listed(res):
        runs = res["singles"][label]
        per_split, vals, aucs, knns, secs = [], [], [], [], []
        for s, j in real_joints(res):
            if "unavailable" in j:
                continue
            g = next(g for g in j["generators"] if g["label"] == label)
            alone = runs[s] if s < len(runs) else None
            alone_ratio = "–" if alone is None or "error" in alone else f"{alone['ratio']:g}"
            mine = "–" if g["ratio"] is None else f"{g['ratio']:g}"
            per_split.append(f"{mine} / {alone_ratio}")
            for bucket, key in ((vals, "val_loss"), (aucs, "val_auc"), (knns, "val_knn_auc")):
                if g[key] is not None:
                    bucket.append(g[key])
            if g["search_s"] is not None:
                secs.append(g["search_s"])
        auc = f"{np.mean(aucs):.3f}" if aucs else "n/a"
        knn = f"{np.mean(knns):.3f}" if knns else "n/a"
        sec = f"{np.mean(secs):.1f}" if secs else "n/a"
        val = pm(vals) if vals else "n/a"
        lines.append(f"| {label} | {', '.join(per_split)} | {val} | {auc} / {knn} | {sec} |")
    return lines


# ------------------------------------------------------------------ reading


def pair(res: dict, label: str) -> dict | None:
    """A conditional row against its per-class twin on the splits both finished."""
    spec = next(s for s in res["specs"] if s["label"] == label)
    if spec["twin"] not in res["singles"]:  # no twin (or its row was left out)
        return None
    cond, twin = ok(res["singles"][label]), ok(res["singles"][spec["twin"]])
    splits = sorted(set(cond) & set(twin))
    if not splits:
        return None
    out = {"label": label, "twin": spec["twin"], "splits": splits}
    for key in ("auc", "knn_auc", "test_loss", "fit_s", "rows_per_s"):
        out[key] = ([cond[s][key] for s in splits], [twin[s][key] for s in splits])
        out[f"d_{key}"] = [a - b for a, b in zip(*out[key], strict=True)]
    return out


def beats(p: dict) -> bool:
    """The target's "beats": lower mean logistic AUC, 5-NN AUC and test loss."""
    return all(np.mean(p[f"d_{k}"]) < 0 for k in ("auc", "knn_auc", "test_loss"))


def pair_sentence(p: dict) -> str:
    n = len(p["splits"])

    def part(key: str, what: str, digits: int) -> str:
        cond, twin = p[key]
        lower = sum(d < 0 for d in p[f"d_{key}"])
        return (
            f"{what} {np.mean(cond):.{digits}f} vs {np.mean(twin):.{digits}f} "
            f"(paired {signed(p[f'd_{key}'], digits)}, {noise_word(p[f'd_{key}'])}; "
            f"lower on {lower}/{n} splits)"
        )

    fit = np.mean(p["fit_s"][0]) / max(np.mean(p["fit_s"][1]), 1e-9)
    speed = np.mean(p["rows_per_s"][0]) / max(np.mean(p["rows_per_s"][1]), 1e-9)
    return (
        f"{p['label']} vs {p['twin']}: {part('auc', 'C2ST logistic', 3)}; "
        f"{part('knn_auc', '5-NN', 3)}; {part('test_loss', 'test loss', 4)}; "
        f"fit {fit:.2g}x the per-class time, sampling {speed:.2g}x its rows/s."
    )


def target_verdict(name: str, pairs: list[dict]) -> str:
    """Target 1 on one digits dataset: which conditional row beats its twin, if any."""
    judged = [p for p in pairs if p["label"] in TARGET_PAIRS]
    if not judged:
        return f"* `{name}`: not judged: no conditional/per-class pair finished."
    n = min(len(p["splits"]) for p in judged)
    winners = [
        f"{p['label']} (test loss paired {signed(p['d_test_loss'])}, "
        f"{noise_word(p['d_test_loss'])})"
        for p in judged
        if beats(p)
    ]
    text = f"met by {' and '.join(winners)}" if winners else "not met: neither beats its twin"
    return f"* `{name}`: {text}; {n} split{'s' if n > 1 else ''}."


def conditional_reading(results: list[dict]) -> list[str]:
    lines = [
        '**Conditional vs per-class** ("beats" = lower mean C2ST logistic AUC, lower mean '
        "5-NN AUC and lower mean balanced test log loss over the splits both finished):",
        "",
    ]
    verdicts = []
    for res in results:
        pairs = [p for p in (pair(res, s["label"]) for s in res["specs"]) if p is not None]
        lines += [f"* `{res['name']}`: {pair_sentence(p)}" for p in pairs]
        if res["name"] in TARGET_IMAGES:
            verdicts.append(target_verdict(res["name"], pairs))
    lines += [
        "",
        "**Target 1** (on the digits images the conditional VAE or diffusion beats "
        "its per-class twin in C2ST AUC and in test loss):",
        "",
        *(verdicts or ["* not judged: no digits image dataset was run."]),
        "",
    ]
    return lines


def joint_sentence(res: dict, cmp: dict) -> str:
    n = len(cmp["splits"])
    at_or_below = float(np.mean(cmp["diff"])) <= 0
    split_wins = sum(d <= 0 for d in cmp["diff"])
    chosen = [
        f"{res['joint_all'][s]['generator']} {res['joint_all'][s]['ratio']:g}"
        for s in cmp["splits"]
    ]
    took = f"{np.mean(cmp['search_s']):.0f} s" if cmp["search_s"] else "–"
    replayed = f" (replayed on split(s) {cmp['replayed']})" if cmp["replayed"] else ""
    text = (
        f"* `{res['name']}`: joint {pm(cmp['joint'])} vs {cmp['best']} {pm(cmp['single'])} "
        f"(paired {signed(cmp['diff'])}, {noise_word(cmp['diff'])}): "
        f"{'at or below' if at_or_below else 'above'}; at or below on {split_wins}/{n} "
        f"splits; chose {', '.join(chosen)}{replayed}; per-split best listed generator "
        f"{pm(cmp['oracle'])}; joint search {took} with fits."
    )
    if cmp["best_all"] is not None and cmp["best_all"] != cmp["best"]:
        every = [ok(res["singles"][cmp["best_all"]])[s]["test_loss"] for s in cmp["splits"]]
        text += f" Best of all rows: {cmp['best_all']} (not listed), {pm(every)}."
    return text


def joint_reading(results: list[dict]) -> list[str]:
    lines = [
        "**Joint search vs the best single generator** (the listed generator with "
        'the lowest mean test loss over the same splits; "at or below" = mean paired '
        "difference <= 0):",
        "",
    ]
    judged, missed, unavailable = [], [], []
    for res in results:
        if not res["joint"]:
            continue
        cmp = joint_comparison(res)
        if cmp is None:
            reason = next((j["unavailable"] for j in res["joint_all"] if "unavailable" in j), "")
            lines.append(f"* `{res['name']}`: joint search unavailable ({reason}).")
            unavailable.append(res["name"])
            continue
        lines.append(joint_sentence(res, cmp))
        judged.append(res["name"])
        if float(np.mean(cmp["diff"])) > 0:
            missed.append(res["name"])
    if not judged and not unavailable:
        return []
    if not judged:
        verdict = "not judged: the joint search was unavailable"
    elif missed:
        verdict = f"not met on {', '.join(f'`{m}`' for m in missed)}"
    else:
        verdict = f"met on all {len(judged)} dataset(s) judged"
    if judged and unavailable:
        verdict += f" (unavailable on {', '.join(f'`{u}`' for u in unavailable)})"
    return [
        *lines,
        "",
        f"**Target 2** (joint at or below the best single generator on every dataset): {verdict}.",
        "",
    ]


def reading(results: list[dict], n_splits: int) -> list[str]:
    return [
        f"## Reading (computed from the tables above; {n_splits} split(s), paired differences "
        "are conditional − per-class and joint − single, ± their SE over splits)",
        "",
        *conditional_reading(results),
        *joint_reading(results),
        *consistency(results),
    ]


def close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def consistency(results: list[dict]) -> list[str]:
    """Whether each generator's search inside the joint search repeated its single search
    (γ̂ and validation loss), and the joint's final model the chosen generator's."""
    ratio = val = total = final = finals = replays = runs = 0
    for res in results:
        for s, j in real_joints(res):
            if "unavailable" in j:
                continue
            runs += 1
            replays += replay_matches(res, s, j)
            for g in j["generators"]:
                alone = res["singles"][g["label"]][s]
                if alone is None or "error" in alone or g["ratio"] is None:
                    continue
                total += 1
                ratio += close(g["ratio"], alone["ratio"])
                val += close(g["val_loss"], alone.get("val_loss"))
                if g["label"] == j["generator"]:
                    finals += 1
                    final += close(j["test_loss"], alone["test_loss"])
    if not total:
        return []
    return [
        f"Inside the joint searches a listed generator's own pick repeats its single search "
        f"(same split, pools, seeds and initial weights) in γ̂ on {ratio}/{total} and in "
        f"validation loss on {val}/{total} (generator, split) pairs; the joint's final model "
        f"has the chosen generator's single-search test loss on {final}/{finals} splits, and "
        f"the replay rule picks the joint's (generator, γ̂) on {replays}/{runs}. A mismatch "
        "means the joint search drew or trained differently from a single search.",
        "",
    ]


def render(results: list[dict], n_splits: int) -> list[str]:
    lines: list[str] = []
    for res in results:
        res["joint_all"] = resolved_joint(res)
    for res in results:
        what = "tabular" if res["kind"] == "tabular" else "images, 8×8"
        lines += [f"## `{res['name']}` ({what})", "", *generator_table(res, n_splits), ""]
        lines += joint_section(res)
    return [*lines, *reading(results, n_splits)]
