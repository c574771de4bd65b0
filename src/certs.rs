//! `healthscope certs`: a CA and a serving certificate for the webhook Service.
