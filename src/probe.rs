//! HTTP probing of the endpoints behind a scope's Services, with timeouts and a global bound.
