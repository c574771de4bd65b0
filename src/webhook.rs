//! HTTPS plumbing for the admission webhook: rustls, certificate reload, body limits, routes.
