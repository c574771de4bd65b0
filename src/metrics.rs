//! Prometheus metrics shared by the webhook, the controller and the probes.
