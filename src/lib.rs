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

/// Asks the kernel not to back this process's memory with transparent huge pages. mimalloc
/// advises them on its arenas, and a huge page stays resident, all 2 MiB of it, while any object
/// on it lives: at 1,000 scopes x 10 workloads that was 14 MiB of the controller's RSS
/// (docs/benchmarks.md). Call it first in `main`, before the runtime allocates. Where the call is
/// refused (an old kernel), memory use is as before and nothing else changes.
pub fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
