//! Database servers as plain values: their names, zones and policies, and the placement rule (which server a new
//! client goes to), as logic without I/O so it is tested on its own.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Invalid, invalid, is_identifier};

/// A database server's name: `^[a-z][a-z0-9-]{0,39}$` (the `db_servers` CHECK).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ServerName(String);

impl ServerName {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        if is_identifier(value, 1..=40, &['-']) {
            Ok(Self(value.to_owned()))
        } else {
            Err(invalid(
                "name",
                "must be 1-40 characters of a-z, 0-9 and '-', starting with a letter",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A placement zone: `^[a-z][a-z0-9-]{0,39}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Zone(String);

impl Zone {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        if is_identifier(value, 1..=40, &['-']) {
            Ok(Self(value.to_owned()))
        } else {
            Err(invalid(
                "zone",
                "must be 1-40 characters of a-z, 0-9 and '-', starting with a letter",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a server takes new clients: `active` does, `paused` keeps its clients and takes none, `draining` takes
/// none and moves its clients off (set by a drain, not by a PATCH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerPolicy {
    Active,
    Paused,
    Draining,
}

impl ServerPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Draining => "draining",
        }
    }

    /// As stored (the table's CHECK allows nothing else).
    pub fn stored(value: &str) -> Self {
        match value {
            "paused" => Self::Paused,
            "draining" => Self::Draining,
            _ => Self::Active,
        }
    }
}

/// Bounds of what an operator may declare, checked at the edge (the table's CHECKs hold the same).
pub const MAX_DATABASES: std::ops::RangeInclusive<i64> = 1..=100_000;
pub const MAX_BUDGET: std::ops::RangeInclusive<i64> = 1..=10_000;
/// At least 1 MiB: a smaller byte capacity cannot hold one database (an empty one is ~7.3 MB).
pub const MAX_BYTES: std::ops::RangeInclusive<i64> = 1_048_576..=i64::MAX;

/// One server as placement sees it: its declaration and its usage.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub policy: ServerPolicy,
    pub zone: Option<String>,
    pub max_databases: i64,
    pub max_bytes: Option<i64>,
    /// Live (not deleted) clients placed on it.
    pub databases: i64,
    /// Their sizes as last measured by the statistics worker.
    pub bytes: i64,
}

impl Candidate {
    fn is_full(&self) -> bool {
        self.databases >= self.max_databases || self.max_bytes.is_some_and(|max| self.bytes >= max)
    }

    /// The usage ratio that binds: the larger of databases / max_databases and bytes / max_bytes.
    pub fn usage(&self) -> f64 {
        let databases = self.databases as f64 / self.max_databases.max(1) as f64;
        let bytes = self
            .max_bytes
            .map_or(0.0, |max| self.bytes as f64 / max.max(1) as f64);
        databases.max(bytes)
    }

    fn why_full(&self) -> String {
        if self.databases >= self.max_databases {
            format!(
                "{} is full ({} of {} databases)",
                self.name, self.databases, self.max_databases
            )
        } else {
            format!(
                "{} is full ({} of {} bytes)",
                self.name,
                self.bytes,
                self.max_bytes.unwrap_or_default()
            )
        }
    }
}

/// The placement rule: among active servers (in `zone` when one is asked for) that are not full, the lowest
/// usage (a server's usage is the larger of its database and byte ratios), then the fewest tenants, then the
/// name. `Err` says why none fits, as a sentence for the caller.
pub fn choose<'c>(
    candidates: &'c [Candidate],
    zone: Option<&Zone>,
) -> Result<&'c Candidate, String> {
    let in_zone: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| zone.is_none_or(|z| c.zone.as_deref() == Some(z.as_str())))
        .collect();
    let scope = match zone {
        Some(zone) => format!("in zone {zone}"),
        None => "registered".to_owned(),
    };
    if in_zone.is_empty() {
        return Err(format!("no database server is {scope}"));
    }
    let mut fitting: Vec<&Candidate> = in_zone
        .iter()
        .copied()
        .filter(|c| c.policy == ServerPolicy::Active && !c.is_full())
        .collect();
    fitting.sort_by(|a, b| {
        a.usage()
            .total_cmp(&b.usage())
            .then(a.databases.cmp(&b.databases))
            .then(a.name.cmp(&b.name))
    });
    if let Some(best) = fitting.first() {
        return Ok(best);
    }
    let reasons: Vec<String> = in_zone
        .iter()
        .map(|c| match c.policy {
            ServerPolicy::Active => c.why_full(),
            policy => format!("{} is {}", c.name, policy.as_str()),
        })
        .collect();
    Err(format!(
        "no database server {scope} can take a new client: {}",
        reasons.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, databases: i64, max: i64) -> Candidate {
        Candidate {
            name: name.to_owned(),
            policy: ServerPolicy::Active,
            zone: None,
            max_databases: max,
            max_bytes: None,
            databases,
            bytes: 0,
        }
    }

    #[test]
    fn the_least_used_server_wins_then_the_fewest_tenants_then_the_name() {
        let servers = [server("a", 5, 10), server("b", 2, 10), server("c", 4, 100)];
        assert_eq!(choose(&servers, None).unwrap().name, "c");
        let tied = [server("b", 1, 10), server("a", 1, 10)];
        assert_eq!(choose(&tied, None).unwrap().name, "a");
        let same_ratio = [server("a", 2, 20), server("b", 1, 10)];
        assert_eq!(choose(&same_ratio, None).unwrap().name, "b");
    }

    #[test]
    fn bytes_count_when_they_bind_and_full_or_paused_servers_are_skipped() {
        let mut big = server("big", 1, 100);
        big.max_bytes = Some(1000);
        big.bytes = 900;
        let small = server("small", 5, 10);
        assert_eq!(
            choose(&[big.clone(), small.clone()], None).unwrap().name,
            "small"
        );
        big.bytes = 1000;
        let mut paused = server("paused", 0, 10);
        paused.policy = ServerPolicy::Paused;
        let full = server("full", 10, 10);
        let err = choose(&[big, paused, full], None).unwrap_err();
        assert!(err.contains("big is full (1000 of 1000 bytes)"), "{err}");
        assert!(err.contains("paused is paused"), "{err}");
        assert!(err.contains("full is full (10 of 10 databases)"), "{err}");
    }

    #[test]
    fn a_zone_limits_the_servers_and_an_unknown_zone_is_named() {
        let mut eu = server("eu1", 9, 10);
        eu.zone = Some("eu".to_owned());
        let us = server("us1", 0, 10);
        let zone = Zone::parse("eu").unwrap();
        assert_eq!(
            choose(&[eu.clone(), us.clone()], Some(&zone)).unwrap().name,
            "eu1"
        );
        let asia = Zone::parse("asia").unwrap();
        let err = choose(&[eu, us], Some(&asia)).unwrap_err();
        assert_eq!(err, "no database server is in zone asia");
    }
}
