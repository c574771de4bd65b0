//! Integration tests against a real kube-apiserver (tests/apiserver): one test binary, so the
//! control plane starts once for all of them.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod controller;
mod crds;
mod fault_proxy;
mod faults;
mod health;
mod health_rule;
mod install;
mod oam_runtime;
mod rbac;
mod testenv;
mod webhook;
mod webhook_server;
