//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod contract;
#[cfg(feature = "postgres")]
pub mod pg;
