"""The ``edit-plugins stats`` command, registered as a plugin's command is."""
from __future__ import annotations

import click

from .hookspecs import hookimpl


@click.command()
@click.option("--hparams", "hparams_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="EasyEdit hparams of a covariance method (MEMIT, AlphaEdit, EMMET, PMET).")
@click.option("--overwrite", is_flag=True, help="Recompute files that are already there.")
def stats(hparams_path, overwrite):
    """Fill the statistics files EasyEdit's layer_stats looks for (and AlphaEdit's P), offline.

    From the corpus the hparams' mom2_dataset names: 'pydoc', 'self', a local text file, or (with downloads
    allowed) one of EasyEdit's Hugging Face datasets. EasyEdit then finds them and downloads nothing.
    """
    from .easyedit_stats import fill_stats, plan

    written = fill_stats(hparams_path, overwrite=overwrite)
    p = plan(hparams_path)
    for path in p.files + ([p.projection] if p.projection else []):
        click.echo(f"{'written' if path in written else 'present'}  {path}")


@hookimpl
def register_commands(cli):
    cli.add_command(stats)
