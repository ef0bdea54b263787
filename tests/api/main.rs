//! The one integration-test binary: every test against real PostgreSQL and real HTTP. Files mirror features.

mod access;
mod cli;
mod clients;
mod consistency;
mod content;
mod crossclient;
mod crossclient_hostile;
mod embedded;
mod fields;
mod fleet;
mod hardening;
mod health;
mod helpers;
mod import;
mod isolation;
mod layers;
mod lists;
mod migrate;
mod nul_character;
mod provisioning;
mod recipients;
mod retention;
mod routing;
mod rule_properties;
mod target_groups;
mod templates;
