"""What a study found: the trials sorted by the objective (a Markdown table, printed and written to
STUDY/report.md), the best trial's command, and three figures from Optuna's matplotlib
visualisations in STUDY/figures/. Written at the end of every worker and by `--report STUDY` at any time."""

from __future__ import annotations

import functools
import warnings

from .space import Space
from .study import StudyDir

ORDER = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4}
FIGURES = ("optimization_history", "slice", "param_importances")


def _value(t):
    """A trial's objective: its value, or (pruned) its last reported one; none for a failed trial."""
    if t.value is not None or t.state.name != "PRUNED" or not t.intermediate_values:
        return t.value
    return t.intermediate_values[max(t.intermediate_values)]


def sorted_trials(study, space: Space) -> list:
    sign = -1 if space.direction == "maximize" else 1

    def key(t):
        v = _value(t)
        return (ORDER.get(t.state.name, 5), v is None, sign * v if v is not None else 0, t.number)

    return sorted(study.get_trials(deepcopy=False), key=key)


def table(study, space: Space) -> str:
    keys = [p.key for p in space.params]
    head = ["rank", "trial", "state", space.objective, "epochs", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * 3 + "---|" * (len(head) - 3)]
    for rank, t in enumerate(sorted_trials(study, space), start=1):
        v = _value(t)
        cells = [
            str(rank),
            str(t.number),
            t.state.name,
            f"{v:.4f}" if v is not None else "",
            str(t.user_attrs.get("epochs", "")),
            *(_fmt(t.params.get(k)) for k in keys),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)


def best_text(study, space: Space) -> str:
    try:
        best = study.best_trial
    except ValueError:
        return "no complete trial yet"
    return (
        f"best: trial {best.number}, {space.objective} {best.value:.4f}; reproduce it with:\n"
        f"    {best.user_attrs.get('command', '(command not recorded)')}"
    )


def write_report(study, space: Space, sd: StudyDir) -> str:
    """The report text (also written to STUDY/report.md) and the figures; returns the text."""
    from .study import tally

    t = tally(study)
    text = (
        f"# Study {sd.name}: {t.done}/{space.trials} trials finished ({t.running} running, {t.waiting} waiting)\n\n"
        f"{table(study, space)}\n\n{best_text(study, space)}\n"
    )
    tmp = sd.report.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(sd.report)
    notes = write_figures(study, space, sd)
    return text + "".join(f"{n}\n" for n in notes)


def write_figures(study, space: Space, sd: StudyDir) -> list[str]:
    """Objective per trial with the running best, each parameter against the objective, and the
    parameters' importances (fANOVA; needs two complete trials); with two numeric params also every trial
    in their plane (trials.png). Returns a line per figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from optuna.visualization import matplotlib as ov

    sd.figures.mkdir(parents=True, exist_ok=True)
    notes = []
    for name in FIGURES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks these plots experimental
                ax = getattr(ov, f"plot_{name}")(study)
            panels = np.ravel(ax) if isinstance(ax, np.ndarray) else [ax]
            fig = panels[0].figure
            fig.set_size_inches(max(6.4, 4.2 * len(panels) + 1.5), 4.6)  # room for slice's colour bar
            path = sd.figures / f"{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            notes.append(f"figure: {path}")
        except Exception as e:  # noqa: BLE001 - e.g. importances before two complete trials
            notes.append(f"figure {name}: not drawn ({str(e).splitlines()[0][:120]})")
    if len(space.params) == 2 and all(p.kind != "categorical" for p in space.params):
        path = sd.figures / "trials.png"
        plot_trials(study, space, path)
        notes.append(f"figure: {path}")
    return notes


def plot_trials(study, space: Space, path) -> None:
    """Two numeric params: every trial in their plane, complete ones coloured and labelled by the
    objective, pruned ones (a diverged run among them) as crosses: where the search went and what it found."""
    import matplotlib.pyplot as plt

    (px, py), trials = space.params, study.get_trials(deepcopy=False)
    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    done = [t for t in trials if t.state.name == "COMPLETE"]
    if done:
        points = ax.scatter(
            [t.params[px.key] for t in done], [t.params[py.key] for t in done], c=[t.value for t in done], s=70,
            cmap="viridis", edgecolors="black", zorder=3,
        )  # fmt: skip
        fig.colorbar(points, ax=ax, label=space.objective)
        for t in done:
            ax.annotate(
                f"{t.value:.3f}", (t.params[px.key], t.params[py.key]), textcoords="offset points", xytext=(6, 5)
            )
    for state, marker, colour in (("PRUNED", "x", "tab:gray"), ("FAIL", "x", "tab:red")):
        some = [t for t in trials if t.state.name == state and px.key in t.params]
        if some:
            ax.scatter([t.params[px.key] for t in some], [t.params[py.key] for t in some], marker=marker, s=60,
                       color=colour, label=f"{state.lower()} ({len(some)})")  # fmt: skip
    base = preset_values(space)  # where the recipe itself stands
    ax.scatter([base[px.key]], [base[py.key]], marker="*", s=260, color="tab:orange", edgecolors="black", zorder=4,
               label=f"{space.preset}'s own values")  # fmt: skip
    ax.set(xlabel=px.key, ylabel=py.key, title=f"study {study.study_name}: {len(trials)} trials")
    ax.set_xscale("log" if px.log else "linear")
    ax.set_yscale("log" if py.log else "linear")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize="small")  # below: no point hidden
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def preset_values(space: Space) -> dict:
    """The searched keys' values in the space's preset with its fixed keys (no search), e.g. the preset's lr."""
    from .toolkit import resolve

    args = space.overrides({})
    cfg = resolve(args[1], None, args[2:])
    return {p.key: functools.reduce(getattr, p.key.split("."), cfg) for p in space.params}
