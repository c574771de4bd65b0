//! Pure: per-kind health rules and aggregation into a scope's status. No I/O.
