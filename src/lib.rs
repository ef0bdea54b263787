//! mandant: database-per-tenant orchestration for multi-client ("Mandanten") management.
//!
//! See ARCHITECTURE.md for the components, the layer order (imports go one way, down this list; a test enforces
//! it) and how a request flows through them.

/// The allocator of the server, its tools, tests and benchmarks (see ARCHITECTURE.md, "Build profile and allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// L0 foundations
pub mod db;
pub mod domain;
pub mod shutdown;
pub mod telemetry;
// L1 configuration
pub mod config;
// L2 persistence and the local cluster
pub mod control;
pub mod embedded;
// L3 database servers
pub mod tenant;
// L4 services
pub mod access;
pub mod data;
pub mod dbservers;
pub mod fanout;
pub mod fleet;
pub mod provisioning;
// L5 application state
pub mod app;
// L6 edges
pub mod http;
pub mod workers;
// L7 assembly
pub mod cli;
pub mod server;
