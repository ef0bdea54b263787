//! mandant: database-per-tenant orchestration for multi-client ("Mandanten") management.
//!
//! See ARCHITECTURE.md for the components and how a request flows through them.

pub mod access;
pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod data;
pub mod db;
pub mod domain;
pub mod embedded;
pub mod fleet;
pub mod http;
pub mod provisioning;
pub mod shutdown;
pub mod sync;
pub mod telemetry;
pub mod tenant;
pub mod workers;
