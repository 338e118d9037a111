//! The scenarios of issue 8.
pub mod burst;
pub mod fairness;
pub mod footprint;
pub mod measured;
pub mod pods;
pub mod proxy;
pub mod restart;
