//! webhook tests against the real control plane.
