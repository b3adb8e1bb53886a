"""The ``edit-plugins superposition`` command, registered as a plugin's command is."""
from __future__ import annotations

import json

import click

from ..hookspecs import hookimpl


def _layer_list(ctx, param, value):
    if value == "all":
        return value
    try:
        layers = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected 'all' or comma-separated layer indices such as 3,8,14, got {value!r}") from None
    if not layers:
        raise click.BadParameter("no layer given")
    return layers


@click.command()
@click.option("--model", "models_", required=True, multiple=True,
              help="Model name or path (repeat for a scaling fit); 'random-init:NAME' is a random control.")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Facts with subject and prompt: known_1000.json, CounterFact or ZsRE.")
@click.option("--layers", default="all", callback=_layer_list, help="'all' or comma-separated layer indices.")
@click.option("--num-facts", type=click.IntRange(min=1), default=300)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--mom2-dataset", default="pydoc", help="Text for C: pydoc (offline), self, a .txt/.jsonl file.")
@click.option("--mom2-n-samples", type=click.IntRange(min=1), default=400)
@click.option("--damping", type=click.FloatRange(min=0), default=1e-4,
              help="Relative ridge on C before inverting (0: none).")
@click.option("--stats-dir", default="data/stats")
@click.option("--heatmap-layers", default=None, help="Layers to plot P for (default: first, middle, last).")
@click.option("--scaling-statistic", default="whitened_cos:kurtosis", help="MATRIX:STATISTIC for the scaling fit.")
def superposition(models_, data, layers, num_facts, out_dir, mom2_dataset, mom2_n_samples, damping, stats_dir,
                  heatmap_layers, scaling_statistic):
    """Measure knowledge superposition per layer (P, Q, whitened and raw cosine); fit scaling across models."""
    from pathlib import Path

    from ..editing.layers import num_layers
    from ..models import load_model
    from . import superposition as sp

    facts = sp.facts_from_file(data, num_facts)
    results = []
    for name in models_:
        model, tok = load_model(name, "auto")
        span = list(range(num_layers(model))) if layers == "all" else layers
        heat = [int(x) for x in heatmap_layers.split(",")] if heatmap_layers else sorted({span[0], span[len(span) // 2], span[-1]})
        result = sp.analyze(model, tok, facts, layers, model_label=name.replace("/", "_").replace(":", "_"),
                            mom2_dataset=mom2_dataset, mom2_n_samples=mom2_n_samples, damping=damping,
                            stats_dir=stats_dir, keep_matrices=heat)
        folder = Path(out_dir) / result.model if len(models_) > 1 else Path(out_dir)
        sp.write_outputs(result, folder, heat)
        click.echo(sp.text_summary(result))
        results.append(result)
        del model
    if len(results) > 1:
        matrix, statistic = scaling_statistic.split(":")
        fit = sp.scaling_fit(results, matrix, statistic)
        Path(out_dir, "scaling.json").write_text(json.dumps(fit, indent=2) + "\n")
        click.echo(f"scaling of {matrix} {statistic} with parameter count: slope {fit['slope']:.3f}, "
                   f"R² {fit['r_squared']:.3f} over {len(results)} models")


@hookimpl
def register_commands(cli):
    cli.add_command(superposition)
