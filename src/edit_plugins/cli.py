"""The ``edit-plugins`` command line."""
from __future__ import annotations

import errno
import json
import sys

import click

from .errors import UserError
from .plugins import register_commands


# What the machine refuses (not the program): a read-only or full disk, a permission, a quota.
ENVIRONMENT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT}


class _Commands(click.Group):
    """Bad input (the project's UserError) and what the machine refuses (a read-only or full disk, a
    permission) are one line on stderr and exit status 2, not a traceback; ``--debug`` shows the traceback
    too. Every file is written whole or not at all, so a run folder stays at its last complete state."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as error:
            if ctx.meta.get("debug"):
                raise
            click.echo(f"Error: {error}", err=True)
            ctx.exit(2)
        except OSError as error:
            if ctx.meta.get("debug") or error.errno not in ENVIRONMENT_ERRNOS:
                raise
            where = f"{error.filename}: " if error.filename else ""
            click.echo(f"Error: {where}{error.strerror} (the files written so far are whole; a run folder can be "
                       "resumed once there is room or permission)", err=True)
            ctx.exit(2)


@click.group(cls=_Commands)
@click.version_option(package_name="edit-plugins")
@click.option("--debug", is_flag=True, help="Show the traceback of an error, not only its message.")
@click.pass_context
def main(ctx, debug):
    """Lifelong knowledge-editing plugins for EasyEdit."""
    ctx.meta["debug"] = debug


def _steps(ctx, param, value):
    if value is None:
        return None
    try:
        steps = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated steps such as 10,100,1000, got {value!r}") from None
    if not steps or min(steps) < 1:
        raise click.BadParameter(f"steps must be 1 or more, got {value!r}")
    return steps


def _diagnostic_names(ctx, param, value):
    if value is None:  # the diagnostics registered as defaults
        return None
    return [d.strip() for d in value.split(",") if d.strip()]  # RunOptions.check refuses unknown ones


@main.command()
def plugins():
    """List registered methods and diagnostics, and the plugin each came from."""
    from . import easyedit_compat
    from .plugins import pm, registry

    reg = registry()
    click.echo("Methods:")
    for m in sorted(reg.methods.values(), key=lambda m: m.name):
        click.echo(f"  {m.name:<10} {m.hparams_class.__name__:<22} from {m.plugin}")
    click.echo("Diagnostics:")
    for d in sorted(reg.diagnostics.values(), key=lambda d: d.name):
        click.echo(f"  {d.name:<10} from {d.plugin}")
    if not reg.diagnostics:
        click.echo("  (none)")
    click.echo("Plugins loaded: " + ", ".join(sorted(pm.get_name(p) or repr(p) for p in pm.get_plugins())))
    if easyedit_compat.available():
        version = "HEAD" if easyedit_compat.is_head() else "0.0.1.dev0"
        click.echo(f"EasyEdit: installed ({version}); ALG_DICT has: "
                   + ", ".join(n for n in reg.methods if n in easyedit_compat.alg_dict()))
    else:
        click.echo("EasyEdit: not installed (methods run through edit-plugins' own API)")


@main.command()
@click.option("--hparams", "hparams_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="EasyEdit-style hparams YAML (alg_name selects the method).")
@click.option("--prompt", required=True, help='Prompt containing the subject, e.g. "The Eiffel Tower is in".')
@click.option("--subject", required=True)
@click.option("--target", "target_new", required=True, help="New target, e.g. Rome.")
@click.option("--device", default=None, help="Override the hparams device: cpu, cuda, cuda:N, auto.")
def edit(hparams_path, prompt, subject, target_new, device):
    """Apply one edit and show the model's prediction before and after."""
    import torch

    from . import hparams as hparams_module
    from .events import collect_events
    from .models import load_model
    from .plugins import get_method

    hp = hparams_module.load(hparams_path)
    if device:
        hp.device = device
    model, tok = load_model(hp.model_name, hp.device, hp.model_parallel)
    request = {"prompt": prompt, "subject": subject, "target_new": target_new}

    def predict():
        ids = tok(prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            return tok.decode(model(**ids).logits[0, -1].argmax())

    before = predict()
    with collect_events() as events:
        get_method(hp.alg_name).apply(model, tok, [request], hp)
    report = {"before": before, "after": predict(), **{k: v for e, _ in events for k, v in e.info.items()}}
    click.echo(json.dumps(report, indent=2))


def print_summary(summary: dict) -> None:
    rows = [("method", summary["method"]), ("edits", f"{summary['edits_done']}/{summary['edits_planned']}")]
    rows += [(f"immediate {k}", v) for k, v in summary["immediate"].items() if v is not None]
    rows += [(f"final {k}", v) for k, v in summary["final_checkpoint"].items() if k != "step" and v is not None]
    rows += [(f"harmonic mean: {k}", v) for k, v in summary["harmonic_mean_components"].items() if v is not None]
    rows += [("harmonic mean score", summary["harmonic_mean_score"])]
    missing = {k: v for k, v in (summary.get("records_without") or {}).items() if v}
    if missing:
        rows.append(("records without", ", ".join(f"{k} {v}" for k, v in missing.items())))
    if summary.get("edits_not_applied"):
        rows.append(("edits refused by the method", summary["edits_not_applied"]))
    if summary.get("layer_histogram"):
        rows.append(("layers chosen", " ".join(f"{k}:{v}" for k, v in summary["layer_histogram"].items())))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"  {key:<{width}}  {value:.3f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")


@main.command()
@click.option("--hparams", "hparams_path", type=click.Path(exists=True, dir_okay=False),
              help="EasyEdit-style hparams YAML (any registered method, or EasyEdit's own).")
@click.option("--data", type=click.Path(exists=True, dir_okay=False),
              help="ZsRE (MEND format) or CounterFact (EasyEdit or ROME format) JSON file.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--resume", "resume", is_flag=False, flag_value="", default=None, metavar="[RUN_DIR]",
              help="Continue a killed or stopped run (RUN_DIR, or the --out folder).")
@click.option("--num-edits", type=click.IntRange(min=1), default=None)
@click.option("--start", type=click.IntRange(min=0), default=0, help="Skip this many records first.")
@click.option("--shuffle/--no-shuffle", default=False)
@click.option("--seed", type=int, default=0)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Edits per apply call, for methods that batch (default: one LEMoE expert's "
                   "edits_per_expert, else the hparams' batch_size, else 1).")
@click.option("--checkpoints", default=None, callback=_steps,
              help="Comma-separated steps (default 1,2,4,8,... and the last).")
@click.option("--save-every", type=click.IntRange(min=1), default=10, help="Save resumable state every K edits.")
@click.option("--probe-data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Never-edited facts for locality, in ROME's known_1000.json format.")
@click.option("--num-probes", type=click.IntRange(min=0), default=100)
@click.option("--unrelated-data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Unrelated questions: a ZsRE file's loc/loc_ans (Natural Questions, e.g. zsre_mend_eval.json).")
@click.option("--num-unrelated", type=click.IntRange(min=0), default=200,
              help="How many unrelated questions are scored; the rest are a pool methods such as WISE train on.")
@click.option("--diagnostics", default=None, callback=_diagnostic_names,
              help="Comma-separated diagnostics to run ('' for none; default: those registered as defaults).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def lifelong(ctx, hparams_path, data, out_dir, resume, num_edits, start, shuffle, seed, batch_size, checkpoints,
             save_every, probe_data, num_probes, unrelated_data, num_unrelated, diagnostics, quiet):
    """Stream edits with no rollback, re-check old ones at checkpoints; resumable after a kill."""
    from .lifelong import RunOptions, resume_lifelong, run_lifelong

    if resume is not None:
        given = [p.opts[0] for p in ctx.command.params if p.name not in ("out_dir", "resume", "quiet")
                 and ctx.get_parameter_source(p.name) not in (None, click.core.ParameterSource.DEFAULT)]
        if given:
            raise click.UsageError(f"--resume continues with the settings saved in the run folder (config.yaml); "
                                   f"drop {', '.join(sorted(given))}")
        summary = resume_lifelong(resume or out_dir, progress_bar=not quiet)
    else:
        if not hparams_path or not data:
            raise click.UsageError("--hparams and --data are required (unless --resume)")
        options = RunOptions(num_edits=num_edits, start=start, shuffle=shuffle, seed=seed, batch_size=batch_size,
                             checkpoints=checkpoints, save_every=save_every, probe_data=probe_data,
                             num_probes=num_probes, unrelated_data=unrelated_data, num_unrelated=num_unrelated,
                             **({} if diagnostics is None else {"diagnostics": diagnostics}))
        summary = run_lifelong(hparams_path, data, out_dir, options=options, progress_bar=not quiet)
    click.echo(f"Run folder: {out_dir if resume is None else (resume or out_dir)}")
    print_summary(summary)


@main.command()
@click.option("--hparams", "hparams_paths", required=True, multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="One method's hparams; repeat for each method.")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for one run folder per method, comparison.md and retention.png.")
@click.option("--num-edits", type=click.IntRange(min=1), default=None)
@click.option("--checkpoints", default=None, callback=_steps,
              help="Comma-separated steps (default 1,2,4,8,... and the last).")
@click.option("--probe-data", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--num-probes", type=click.IntRange(min=0), default=100)
@click.option("--unrelated-data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Unrelated questions: a ZsRE file's loc/loc_ans (Natural Questions, e.g. zsre_mend_eval.json).")
@click.option("--num-unrelated", type=click.IntRange(min=0), default=200)
@click.option("--seed", type=int, default=0)
@click.option("--orders", type=click.IntRange(min=1), default=1,
              help="Also run every method on ORDERS-1 shuffled orders (seeds 1, 2, ...); the table gives min-max.")
@click.option("--fresh", is_flag=True, help="Run every method again, replacing its run folder in --out.")
def compare(hparams_paths, data, out_dir, num_edits, checkpoints, probe_data, num_probes, unrelated_data,
            num_unrelated, seed, orders, fresh):
    """Run several methods on the same edits (order, checkpoints, probes), then one table and one plot.

    Each method runs as `edit-plugins lifelong` in its own process; complete runs are kept, stopped ones resumed,
    where they were made with these settings (otherwise the comparison is refused, naming the difference).
    """
    from .lifelong import RunOptions
    from .lifelong.compare import run_all, write_report

    args = ["--seed", str(seed), "--num-probes", str(num_probes), "--num-unrelated", str(num_unrelated)]
    if checkpoints:
        args += ["--checkpoints", ",".join(map(str, checkpoints))]
    if num_edits:
        args += ["--num-edits", str(num_edits)]
    if probe_data:
        args += ["--probe-data", probe_data]
    if unrelated_data:
        args += ["--unrelated-data", unrelated_data]
    options = RunOptions(num_edits=num_edits, seed=seed, checkpoints=checkpoints, probe_data=probe_data,
                         num_probes=num_probes, unrelated_data=unrelated_data, num_unrelated=num_unrelated)
    folders = run_all(list(hparams_paths), data, out_dir, args, options=options, fresh=fresh, orders=orders)
    table_path, plot_path = write_report(folders, out_dir)
    click.echo(table_path.read_text())
    click.echo(f"Table: {table_path}\nPlot: {plot_path}")


# Commands that plugins add (superposition, stats, a third party's).
register_commands(main)


if __name__ == "__main__":
    sys.exit(main())
