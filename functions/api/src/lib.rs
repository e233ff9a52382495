//! HTTP API (filled in by the functions work).
