//! healthscope: an admission webhook and status controller for the OAM v1alpha2 HealthScope.
//!
//! The pure core ([`api`], [`membership`], [`health`], [`admission`]) does no I/O; the edges
//! ([`webhook`], [`controller`], [`probe`], [`serve`], [`leader`]) talk to the network.

pub mod api;
pub mod cli;
