//! NoMQ keyrings (in progress).
