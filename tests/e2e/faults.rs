//! faults tests against the real control plane.
