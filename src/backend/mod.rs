//! Backends run lowered programs; they know ops, never models.

pub mod cpu;
pub mod gpu;
