//! Async adapter over embassy-net (being written).
