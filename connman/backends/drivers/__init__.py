"""One module per driver: the only places that know a driver's internals (issue 20).

Each module has a module-level `classify(exc) -> Kind | None`. (Minimal package file from the
psycopg branch; the error-classification work brings the dispatching one.)
"""
