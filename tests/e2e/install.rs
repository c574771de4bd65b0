//! install tests against the real control plane.
