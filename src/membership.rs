//! Pure: which workload belongs to which HealthScope, and the label keys that mark it. Both the
//! webhook and the controller's backstop call this module; no I/O.
