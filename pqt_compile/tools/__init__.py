"""Tools around a PQT training run: explain / pqt-dump (what the compiler did), the demo, and
the command-line conventions they share (cli)."""
