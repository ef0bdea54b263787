//! The one integration-test binary: every test against real PostgreSQL and real HTTP. Files mirror features.

mod cli;
mod clients;
mod embedded;
mod fleet;
mod health;
mod helpers;
mod lists;
mod migrate;
mod provisioning;
mod recipients;
mod routing;
