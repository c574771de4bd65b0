//! The status controller: watch caches, reconcile, status writes, events, membership backstop.
