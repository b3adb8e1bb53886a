"""One folder per editing method: config (hparams) separate from mechanics."""
