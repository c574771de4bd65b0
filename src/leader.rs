//! Lease-based leader election: only the leader writes.
