//! controller tests against the real control plane.
