//! healthscope: an admission webhook and status controller for the OAM v1alpha2 HealthScope.
//!
//! The pure core ([`api`], [`membership`], [`health`], [`admission`]) does no I/O; the edges
//! ([`webhook`], [`controller`], [`prober`], [`admin`], [`leader`]) talk to the network; [`app`]
//! wires them into the process and [`cli`] parses the command line. docs/architecture.md is the
//! map.

pub mod admin;
pub mod admission;
pub mod api;
pub mod app;
pub mod cache;
pub mod certs;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod health;
pub mod leader;
pub mod membership;
pub mod metrics;
pub mod prober;
pub mod telemetry;
pub mod webhook;

// Admission decodes, decides and encodes many small, short-lived values per review (strings,
// label maps, JSON); mimalloc serves them with less CPU than glibc's malloc (docs/benchmarks.md).
// Set here, so every binary built on the library (healthscope, the benchmarks) uses it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
