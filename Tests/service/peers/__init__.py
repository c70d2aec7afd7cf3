"""Faithful re-implementations of each peer's routes encoder and decoder, written from their source
(cited per function, file:line at the version or commit named). numpy stands in for torch: the
operations used (frombuffer, reshape, cat, slicing, dtype casts) have the same semantics."""
