"""The model: credentials parsed and merged, registry names and settings, selectors, the ledger.
Pure data and decoding: no host I/O, no API, no threads (the sources feed it, the targets read it)."""
