//! Tokio UDP adapter for NoMQ (work in progress: not yet implemented)
//!
//! This crate is a placeholder in the workspace; it exports nothing yet.
#![no_std]
