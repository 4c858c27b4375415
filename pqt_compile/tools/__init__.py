"""Tools around a PQT training run: explain / pqt-dump (what the compiler did), pqt-export (the
trained model for an inference engine), the demo, and the command-line conventions they share
(cli)."""
