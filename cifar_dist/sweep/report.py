"""What a study found: the trials sorted by the objective (a Markdown table, printed and written to
STUDY/report.md), the best trial's command, and three figures from Optuna's matplotlib
visualisations in STUDY/figures/. Written at the end of every worker and by `--report STUDY` at any time."""

from __future__ import annotations

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
    notes = write_figures(study, sd)
    return text + "".join(f"{n}\n" for n in notes)


def write_figures(study, sd: StudyDir) -> list[str]:
    """Objective per trial with the running best, each parameter against the objective, and the
    parameters' importances (fANOVA; needs two complete trials). Returns a line per figure."""
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
    return notes
