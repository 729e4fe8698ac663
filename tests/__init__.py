"""EnCLAP test suite (a package so that `tests.helpers` never resolves to laion_clap's own `tests`)."""
