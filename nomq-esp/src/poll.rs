//! Poll-based adapter over smoltcp (being written).
