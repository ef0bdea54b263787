//! The one integration-test binary: every test against real PostgreSQL and real HTTP. Files mirror features.

mod access;
mod cli;
mod clients;
mod consistency;
mod embedded;
mod fields;
mod fleet;
mod hardening;
mod health;
mod helpers;
mod import;
mod layers;
mod lists;
mod migrate;
mod nul_character;
mod provisioning;
mod recipients;
mod routing;
mod target_groups;
mod templates;
