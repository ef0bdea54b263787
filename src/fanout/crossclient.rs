//! Cross-client work from the master: a target group over standard and central fields evaluated in many clients'
//! databases at once (counts), or client by client (a stream of recipients), through the routing pool as
//! [`Use::Scan`] work, at most `workers.fanout_concurrency` clients at a time, each within
//! `workers.fanout_client_deadline_ms`. A client that is down, suspended or slow yields its own error and never
//! fails the whole answer. Which clients, and with which privacy, the caller decides (the access check is above
//! this layer); this module never widens that set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tokio::sync::{Semaphore, mpsc};

use super::{FanOut, on_client};
use crate::control::clients::ClientRecord;
use crate::control::fields::FieldRecord;
use crate::data::recipients::Recipient;
use crate::data::rules;
use crate::data::schema::{Field, FieldType, Origin, Schema};
use crate::data::target_groups::{count_rule, members_by_rule};
use crate::data::{DataError, Privacy};

/// One client a cross-client request visits, with what the caller may see there.
#[derive(Debug, Clone)]
pub struct Visit {
    pub client: ClientRecord,
    pub privacy: Privacy,
}

/// One client's part of a cross-client count.
#[derive(Debug)]
pub struct ClientCount {
    pub client: ClientRecord,
    pub result: Result<i64, DataError>,
    /// How long the client took, connection included.
    pub elapsed: Duration,
}

/// What a cross-client stream yields, client by client.
#[derive(Debug)]
pub enum StreamItem {
    /// A page of one client's matching recipients (protected by the caller's privacy there).
    Recipients(String, Vec<Recipient>),
    /// The client failed (before or in the middle of its recipients); the stream goes on with the next.
    Failed(String, DataError),
}

/// Recipients fetched per query of a stream.
pub const STREAM_PAGE: i64 = 500;

/// The schema a cross-client rule is checked against: the standard fields and the central ones (a client's own
/// field does not exist everywhere).
pub fn central_schema(central: &[FieldRecord]) -> Schema {
    Schema::standard_with(central.iter().filter_map(|f| {
        let ty = FieldType::parse(&f.data_type, f.length)?;
        Some(Field::new(&f.name, ty, Origin::Central, f.personal))
    }))
}

/// Compiles a cross-client rule against [`central_schema`]: refuses client fields and mailing lists (their ids
/// differ from client to client). Returns the fields it reads.
pub fn check_rule(rule: &Json, schema: &Schema) -> Result<Vec<String>, DataError> {
    let compiled = rules::compile(rule, schema).map_err(|message| {
        if message.contains("unknown field") {
            DataError::Rule(format!(
                "{message}; a cross-client rule may use standard and central fields only"
            ))
        } else {
            DataError::Rule(message)
        }
    })?;
    if !compiled.lists.is_empty() {
        return Err(DataError::Rule(
            "a cross-client rule cannot name a mailing list: list ids differ from client to client"
                .into(),
        ));
    }
    Ok(compiled.fields)
}

impl FanOut {
    /// The per-client deadline of cross-client work.
    pub fn client_deadline(&self) -> Duration {
        self.deadline
    }

    /// Counts the recipients `rule` matches in each visited client, in parallel (bounded), each within the
    /// per-client deadline and all within `overall` (a client still waiting or running then is reported as timed
    /// out and its work is cut off, so slow clients never fail the whole answer); the answers come in the order
    /// of `visits`.
    pub async fn count_across(
        &self,
        rule: Arc<Json>,
        visits: Vec<Visit>,
        overall: Duration,
    ) -> Vec<ClientCount> {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let deadline = self.deadline;
        let clients: Vec<ClientRecord> = visits.iter().map(|v| v.client.clone()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (index, visit) in visits.into_iter().enumerate() {
            let (data, rule, permits) = (self.data.clone(), rule.clone(), permits.clone());
            let span = tracing::info_span!("crossclient_count", client = %visit.client.slug);
            tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let _permit = permits.acquire_owned().await;
                    let started = Instant::now();
                    let result = count_one(&data, &rule, &visit, deadline).await;
                    if let Err(e) = &result {
                        tracing::info!(error = %e, "cross-client count failed for one client");
                    }
                    let elapsed = started.elapsed();
                    (
                        index,
                        ClientCount {
                            client: visit.client,
                            result,
                            elapsed,
                        },
                    )
                },
                span,
            ));
        }
        let mut counts: Vec<Option<ClientCount>> = clients.iter().map(|_| None).collect();
        let gather = async {
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((index, count)) => counts[index] = Some(count),
                    Err(e) => tracing::error!(error = %e, "a cross-client task panicked"),
                }
            }
        };
        if tokio::time::timeout(overall, gather).await.is_err() {
            tracing::warn!(
                unfinished = tasks.len(),
                "a cross-client count reached its overall deadline; the clients left are reported as timed out"
            );
            // Aborted tasks drop their connections through `within`'s guard: abandoned, never back busy.
            tasks.abort_all();
        }
        counts
            .into_iter()
            .zip(clients)
            .map(|(count, client)| {
                count.unwrap_or(ClientCount {
                    client,
                    result: Err(DataError::Deadline(overall)),
                    elapsed: overall,
                })
            })
            .collect()
    }

    /// Streams the recipients `rule` matches, client by client in the order of `visits`, in pages of
    /// [`STREAM_PAGE`]; each connection and each page within the per-client deadline. Stops when the receiver is
    /// dropped (the caller went away).
    pub fn stream_across(&self, rule: Arc<Json>, visits: Vec<Visit>) -> mpsc::Receiver<StreamItem> {
        let (tx, rx) = mpsc::channel(4);
        let (data, deadline) = (self.data.clone(), self.deadline);
        tokio::spawn(async move {
            for visit in visits {
                let slug = visit.client.slug.clone();
                let span = tracing::info_span!("crossclient_stream", client = %slug);
                let sent = tracing::Instrument::instrument(
                    stream_client(&data, &rule, &visit, deadline, &tx),
                    span,
                )
                .await;
                if !sent {
                    return;
                }
            }
        });
        rx
    }
}

async fn count_one(
    data: &crate::data::DataPlane,
    rule: &Json,
    visit: &Visit,
    deadline: Duration,
) -> Result<i64, DataError> {
    on_client(data, &visit.client.slug, deadline, async |conn| {
        count_rule(conn.client(), rule, &visit.privacy).await
    })
    .await
}

/// One client's part of a stream; false once the receiver is gone. Each page takes a connection, runs its query
/// within the deadline and gives the connection back *before* the page is sent: a reader that stops reading
/// holds no connection (only this task and a few pages in the channel).
async fn stream_client(
    data: &crate::data::DataPlane,
    rule: &Json,
    visit: &Visit,
    deadline: Duration,
    tx: &mpsc::Sender<StreamItem>,
) -> bool {
    let slug = visit.client.slug.clone();
    let failed = |e: DataError| StreamItem::Failed(slug.clone(), e);
    let mut after = None;
    loop {
        let page = on_client(data, &slug, deadline, async |conn| {
            members_by_rule(conn.client(), rule, after, STREAM_PAGE, &visit.privacy).await
        })
        .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => return tx.send(failed(e)).await.is_ok(),
        };
        let full = page.len() as i64 == STREAM_PAGE;
        after = page.last().map(|r| r.id);
        if !page.is_empty()
            && tx
                .send(StreamItem::Recipients(slug.clone(), page))
                .await
                .is_err()
        {
            return false;
        }
        if !full {
            return true;
        }
    }
}
