//! The admin/API server: /scopes, /metrics, /healthz, /readyz.
