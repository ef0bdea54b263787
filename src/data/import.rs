//! Recipient import: CSV or NDJSON, streamed from the request body into PostgreSQL.
//!
//! One transaction per request: a temporary staging table (`ON COMMIT DROP`), `COPY ... FROM STDIN` fed record by
//! record as the body arrives (each record validated against the tenant's [`Schema`] first), then one
//! `INSERT ... SELECT ... ON CONFLICT (lower(email)) DO UPDATE` (or, when none of the addresses is known yet, a
//! plain `INSERT ... SELECT`, falling back to the upsert if a concurrent writer adds one meanwhile). A bad record, a body over the size limit or a
//! dropped request aborts the COPY and rolls everything back: all or nothing.
//!
//! Semantics (chosen, documented in the README): the e-mail address is the key; an empty CSV cell or an absent /
//! `null` NDJSON key leaves the stored value alone (an import never erases data, PATCH does); when an address
//! appears several times in one import, its last record wins.

use std::collections::HashSet;
use std::hash::BuildHasher;

use bytes::{Bytes, BytesMut};
use deadpool_postgres::tokio_postgres::error::SqlState;
use deadpool_postgres::tokio_postgres::{Client, Transaction};
use futures_util::{SinkExt, Stream, StreamExt, pin_mut};
use serde::Serialize;
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::DataError;
use super::schema::{Field, Schema, Value, truncate};

/// Bytes collected before they are sent to the COPY stream.
const COPY_CHUNK: usize = 256 * 1024;
/// The longest single record accepted.
const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Addresses tracked for repeats; a larger import simply de-duplicates in PostgreSQL.
const MAX_TRACKED: usize = 4_000_000;

/// One hasher for the whole process is fine: the hashes never leave one import.
static FOLD: std::sync::LazyLock<std::hash::RandomState> =
    std::sync::LazyLock::new(std::hash::RandomState::new);

/// The body's format, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv { delimiter: u8 },
    Ndjson,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct ImportOutcome {
    /// Records read (after the CSV header).
    pub records: u64,
    /// Recipients created.
    pub inserted: u64,
    /// Existing recipients updated (matched by e-mail address, case-insensitively).
    pub updated: u64,
}

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("line {line}: {reason}")]
    BadRecord { line: u64, reason: String },
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Body(String),
    #[error("the body holds no records")]
    Empty,
}

fn bad(line: u64, reason: impl Into<String>) -> DataError {
    DataError::Import(ImportError::BadRecord {
        line,
        reason: reason.into(),
    })
}

/// Where the imported recipients land besides the recipients table (`?list=`, an inner client's scope).
#[derive(Debug, Clone, Default)]
pub enum Landing {
    #[default]
    Nowhere,
    /// Every imported recipient is bound (status `active`) to this list, unless it is on it already.
    List(i64),
    /// An inner client whose scope is a rule only: every imported recipient becomes a member by the rule, and
    /// must match it (else nothing is imported).
    Rule {
        inner_no: i32,
        rule: serde_json::Value,
    },
}

/// Streams `body` into the tenant's recipients. Nothing is written unless every record is valid.
pub async fn run<S, E>(
    db: &mut Client,
    schema: &Schema,
    format: Format,
    body: S,
    limit_bytes: usize,
    landing: &Landing,
) -> Result<ImportOutcome, DataError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let fields: Vec<&Field> = schema.writable_fields().collect();
    let tx = db.transaction().await?;
    let columns: Vec<String> = fields.iter().map(|f| f.column()).collect();
    create_staging(&tx, &fields).await?;
    let mut reader = RecordReader::new(format, schema, &fields);
    copy_body(&tx, &columns, &mut reader, body, limit_bytes).await?;

    let source = staged_rows(reader.needs_dedup);
    let written = written_columns(&columns, &reader.present);
    let records = reader.records;
    if let Some(inserted) = insert_all_new(&tx, &written, source).await? {
        land(&tx, schema, landing).await?;
        tx.commit().await?;
        return Ok(ImportOutcome {
            records,
            inserted,
            updated: 0,
        });
    }
    let (inserted, updated) = upsert(&tx, &written, source).await?;
    land(&tx, schema, landing).await?;
    tx.commit().await?;
    Ok(ImportOutcome {
        records,
        inserted,
        updated,
    })
}

/// Binds the staged recipients to the landing list, or makes them members of an inner client's rule scope
/// (refusing the import when one does not match the rule).
async fn land(tx: &Transaction<'_>, schema: &Schema, landing: &Landing) -> Result<(), DataError> {
    // The stored lower-case address where it is indexed: `lower(email)` cannot use an index under an inner
    // client's row-level security.
    let key = if schema.email_lower {
        "r.mandant_email_lower = lower(s.email)"
    } else {
        "lower(r.email) = lower(s.email)"
    };
    match landing {
        Landing::Nowhere => Ok(()),
        Landing::List(list) => {
            let exists: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM mailing_lists WHERE id = $1)",
                    &[list],
                )
                .await?
                .get(0);
            if !exists {
                return Err(DataError::OutsideScope(format!(
                    "mailing list {list} does not exist; nothing was imported"
                )));
            }
            let sql = format!(
                "INSERT INTO bindings (mailing_list_id, recipient_id, status)
                 SELECT l.id, r.id, 'active' FROM mandant_import s JOIN recipients r ON {key}
                 JOIN mailing_lists l ON l.id = $1
                 ON CONFLICT (mailing_list_id, recipient_id) DO NOTHING"
            );
            tx.execute(&sql, &[list]).await?;
            Ok(())
        }
        Landing::Rule { inner_no, rule } => {
            let sql = format!(
                "UPDATE recipients r SET mandant_inner_rules = array_append(r.mandant_inner_rules, $1::int)
                 FROM mandant_import s WHERE {key} AND NOT r.mandant_inner_rules @> ARRAY[$1::int]"
            );
            tx.execute(&sql, &[inner_no]).await?;
            let compiled = super::rules::compile(rule, schema).map_err(DataError::Rule)?;
            let sql = format!(
                "SELECT count(*) FROM mandant_import s JOIN recipients r ON {key} WHERE NOT coalesce(({}), false)",
                compiled.sql
            );
            let outside: i64 = tx.query_one(&sql, &compiled.param_refs()).await?.get(0);
            if outside > 0 {
                return Err(DataError::OutsideScope(format!(
                    "{outside} imported recipients do not match this inner client's rule; nothing was imported"
                )));
            }
            Ok(())
        }
    }
}

/// The staging table the COPY fills: the line number, then every writable field in its own type. Dropped at
/// commit (or with the transaction).
async fn create_staging(tx: &Transaction<'_>, fields: &[&Field]) -> Result<(), DataError> {
    let staging = format!(
        "CREATE TEMPORARY TABLE mandant_import (line int8 NOT NULL, {}) ON COMMIT DROP",
        fields
            .iter()
            .map(|f| format!("{} {}", f.column(), f.ty.sql_type()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    tx.batch_execute(&staging).await?;
    Ok(())
}

/// Reads the body chunk by chunk as it arrives, validating each record and sending the COPY rows on in chunks of
/// [`COPY_CHUNK`]. A read error, a body over `limit_bytes`, a bad record or no record at all returns before the
/// COPY is finished: the dropped sink aborts it (`CopyFail`).
async fn copy_body<S, E>(
    tx: &Transaction<'_>,
    columns: &[String],
    reader: &mut RecordReader<'_>,
    body: S,
    limit_bytes: usize,
) -> Result<(), DataError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY mandant_import (line, {}) FROM STDIN",
            columns.join(", ")
        ))
        .await?;
    pin_mut!(sink);

    let mut out = BytesMut::with_capacity(COPY_CHUNK * 2);
    let mut received = 0usize;
    pin_mut!(body);
    loop {
        let chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => return Err(DataError::Import(ImportError::Body(e.to_string()))),
            None => break,
        };
        received += chunk.len();
        if received > limit_bytes {
            return Err(DataError::Import(ImportError::TooLarge(limit_bytes)));
        }
        reader.feed(&chunk, &mut out)?;
        if out.len() >= COPY_CHUNK {
            sink.send(out.split().freeze()).await?;
        }
    }
    reader.finish(&mut out)?;
    if reader.records == 0 {
        return Err(DataError::Import(ImportError::Empty));
    }
    if !out.is_empty() {
        sink.send(out.split().freeze()).await?;
    }
    sink.as_mut().finish().await?;
    Ok(())
}

/// The staged rows to move. An address repeated in one import must reach the upsert once (the last record); the
/// sort that ensures it costs about a third of the upsert, so it is skipped when parsing saw no repeat.
fn staged_rows(needs_dedup: bool) -> &'static str {
    if needs_dedup {
        "SELECT DISTINCT ON (lower(email)) * FROM mandant_import ORDER BY lower(email), line DESC"
    } else {
        "SELECT * FROM mandant_import"
    }
}

/// The columns the move writes: only the fields the import has (`email` always, first), so the others keep their
/// values, and a required field that is absent gets its default in new recipients.
fn written_columns<'c>(columns: &'c [String], present: &[bool]) -> Vec<&'c str> {
    columns
        .iter()
        .zip(present)
        .enumerate()
        .filter(|(i, (_, present))| *i == 0 || **present)
        .map(|(_, (column, _))| column.as_str())
        .collect()
}

/// Only new addresses (a first import): a plain INSERT, about twice as fast as the upsert. Returns how many were
/// inserted, or `None` when an address is known already — or a concurrent writer added one meanwhile (the unique
/// index refuses it; the savepoint undoes the attempt): then the upsert has to run.
async fn insert_all_new(
    tx: &Transaction<'_>,
    written: &[&str],
    source: &str,
) -> Result<Option<u64>, DataError> {
    let any_known: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM mandant_import s JOIN recipients r ON lower(r.email) = lower(s.email))",
            &[],
        )
        .await?
        .get(0);
    if any_known {
        return Ok(None);
    }
    tx.batch_execute("SAVEPOINT mandant_insert").await?;
    let cols = written.join(", ");
    let insert = format!("INSERT INTO recipients ({cols}) SELECT {cols} FROM ({source}) AS source");
    match tx.execute(&insert, &[]).await {
        Ok(inserted) => Ok(Some(inserted)),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT mandant_insert")
                .await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// `INSERT ... ON CONFLICT (lower(email)) DO UPDATE` of the staged rows, keeping a stored value where the import
/// has none; returns (inserted, updated).
async fn upsert(
    tx: &Transaction<'_>,
    written: &[&str],
    source: &str,
) -> Result<(u64, u64), DataError> {
    let cols = written.join(", ");
    let keep = |c: &str| format!("{c} = coalesce(EXCLUDED.{c}, recipients.{c})");
    let upsert = format!(
        "WITH source AS ({source}), written AS (
             INSERT INTO recipients ({cols}) SELECT {cols} FROM source
             ON CONFLICT ((lower(email))) DO UPDATE SET {sets}
             RETURNING (xmax = 0) AS inserted
         )
         SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written",
        // The e-mail address keeps its stored spelling; `updated_at` always moves, so an import of addresses
        // alone is still a valid statement (and counts its matches as updates).
        sets = written
            .iter()
            .skip(1)
            .map(|c| keep(c))
            .chain(["updated_at = now()".to_owned()])
            .collect::<Vec<_>>()
            .join(", "),
    );
    // Under an inner client's row-level security, an address that exists outside its slice is invisible to the
    // conflict check and refused by the policy (or the unique index): the one existence signal, as on create.
    let row = tx
        .query_one(&upsert, &[])
        .await
        .map_err(|e| match e.code() {
            Some(c)
                if *c == SqlState::INSUFFICIENT_PRIVILEGE || *c == SqlState::UNIQUE_VIOLATION =>
            {
                DataError::EmailTaken
            }
            _ => DataError::Query(e),
        })?;
    let count = |i| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok((count(0), count(1)))
}

/// Turns body bytes into validated COPY rows.
struct RecordReader<'a> {
    format: Format,
    schema: &'a Schema,
    fields: &'a [&'a Field],
    /// For each column of the input, the index of its field in `fields`.
    mapping: Option<Vec<usize>>,
    csv: csv_core::Reader,
    /// CSV: the current record's unescaped bytes and field ends. NDJSON: the current partial line.
    record: Vec<u8>,
    ends: Vec<usize>,
    record_len: usize,
    ends_len: usize,
    /// The physical line the current record starts on (1-based).
    line: u64,
    /// Line feeds read so far (CSV).
    newlines: u64,
    /// CSV: the last record is complete and the next one has not started.
    between_records: bool,
    records: u64,
    values: Vec<Value>,
    started: bool,
    /// Hashes of the (ASCII-lowercased) addresses seen so far, to notice a repeat.
    seen: HashSet<u64>,
    /// A repeat (or an address whose folding PostgreSQL might do differently) was seen.
    needs_dedup: bool,
    /// Fields that appear in the import (CSV header, any NDJSON key); only these are written.
    present: Vec<bool>,
}

impl<'a> RecordReader<'a> {
    fn new(format: Format, schema: &'a Schema, fields: &'a [&'a Field]) -> Self {
        let delimiter = match format {
            Format::Csv { delimiter } => delimiter,
            Format::Ndjson => b',',
        };
        Self {
            format,
            schema,
            fields,
            mapping: None,
            csv: csv_core::ReaderBuilder::new().delimiter(delimiter).build(),
            record: match format {
                Format::Csv { .. } => vec![0; 4096],
                Format::Ndjson => Vec::new(),
            },
            ends: vec![0; 64],
            record_len: 0,
            ends_len: 0,
            line: 1,
            newlines: 0,
            between_records: true,
            records: 0,
            values: vec![Value::Null; fields.len()],
            started: false,
            seen: HashSet::new(),
            needs_dedup: false,
            present: vec![false; fields.len()],
        }
    }

    fn feed(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<(), DataError> {
        if !self.started {
            // A UTF-8 byte-order mark (spreadsheet exports) is not part of the first column's name.
            if input.starts_with(b"\xEF\xBB\xBF") {
                input = &input[3..];
            }
            self.started = !input.is_empty();
        }
        match self.format {
            Format::Csv { .. } => self.feed_csv(input, out, false),
            Format::Ndjson => self.feed_ndjson(input, out),
        }
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), DataError> {
        match self.format {
            Format::Csv { .. } => self.feed_csv(&[], out, true),
            Format::Ndjson => {
                let rest = std::mem::take(&mut self.record);
                self.ndjson_line(&rest, out)
            }
        }
    }

    fn feed_csv(
        &mut self,
        mut input: &[u8],
        out: &mut BytesMut,
        at_end: bool,
    ) -> Result<(), DataError> {
        use csv_core::ReadRecordResult::*;
        // csv-core takes empty input for the end of the input: an empty chunk of the body (the HTTP stream may
        // deliver one) would otherwise end the record it falls into. Found by a property test.
        if input.is_empty() && !at_end {
            return Ok(());
        }
        loop {
            if self.between_records {
                // Line breaks between records are skipped here, so the next record's first line is known.
                let skip = input
                    .iter()
                    .take_while(|b| matches!(b, b'\n' | b'\r'))
                    .count();
                self.newlines += newlines(&input[..skip]);
                input = &input[skip..];
                if !input.is_empty() {
                    self.line = self.newlines + 1;
                    self.between_records = false;
                } else if !at_end {
                    return Ok(());
                }
            }
            let (result, read, written, ended) = self.csv.read_record(
                input,
                &mut self.record[self.record_len..],
                &mut self.ends[self.ends_len..],
            );
            self.newlines += newlines(&input[..read]);
            input = &input[read..];
            self.record_len += written;
            self.ends_len += ended;
            match result {
                InputEmpty if !at_end => return Ok(()),
                InputEmpty => {}
                OutputFull => {
                    if self.record.len() >= MAX_RECORD_BYTES {
                        return Err(bad(
                            self.line,
                            format!("the record is longer than {MAX_RECORD_BYTES} bytes"),
                        ));
                    }
                    self.record.resize(self.record.len() * 2, 0);
                }
                OutputEndsFull => {
                    if self.ends.len() >= 4096 {
                        return Err(bad(self.line, "the record has too many columns"));
                    }
                    self.ends.resize(self.ends.len() * 2, 0);
                }
                Record => {
                    self.csv_record(out)?;
                    self.record_len = 0;
                    self.ends_len = 0;
                    self.between_records = true;
                }
                End => return Ok(()),
            }
        }
    }

    fn csv_record(&mut self, out: &mut BytesMut) -> Result<(), DataError> {
        let line = self.line;
        let text = std::str::from_utf8(&self.record[..self.record_len])
            .map_err(|_| bad(line, "the record is not valid UTF-8"))?;
        let mut cells = Vec::with_capacity(self.ends_len);
        let mut start = 0;
        for &end in &self.ends[..self.ends_len] {
            cells.push(&text[start..end]);
            start = end;
        }
        // A blank line is no record.
        if cells.len() == 1 && cells[0].trim().is_empty() {
            return Ok(());
        }
        let Some(mapping) = &self.mapping else {
            let mapping = header(self.schema, self.fields, &cells).map_err(|r| bad(line, r))?;
            for &index in &mapping {
                self.present[index] = true;
            }
            self.mapping = Some(mapping);
            return Ok(());
        };
        if cells.len() != mapping.len() {
            return Err(bad(
                line,
                format!("expected {} columns, found {}", mapping.len(), cells.len()),
            ));
        }
        self.values.fill(Value::Null);
        for (&field, cell) in mapping.iter().zip(&cells) {
            let f = self.fields[field];
            let value = f
                .parse_text(cell)
                .map_err(|r| bad(line, format!("{}: {r}", f.name)))?;
            if value.is_null() && f.required {
                return Err(bad(line, format!("{}: is required", f.name)));
            }
            self.values[field] = value;
        }
        self.emit(out)
    }

    fn feed_ndjson(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), DataError> {
        let mut rest = input;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(pos);
            if self.record.is_empty() {
                self.ndjson_line(head, out)?;
            } else {
                let mut whole = std::mem::take(&mut self.record);
                whole.extend_from_slice(head);
                self.ndjson_line(&whole, out)?;
            }
            self.line += 1;
            rest = &tail[1..];
        }
        if self.record.len() + rest.len() > MAX_RECORD_BYTES {
            return Err(bad(
                self.line,
                format!("the record is longer than {MAX_RECORD_BYTES} bytes"),
            ));
        }
        self.record.extend_from_slice(rest);
        Ok(())
    }

    fn ndjson_line(&mut self, line_bytes: &[u8], out: &mut BytesMut) -> Result<(), DataError> {
        let line = self.line;
        if line_bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let object: serde_json::Map<String, Json> = serde_json::from_slice(line_bytes)
            .map_err(|e| bad(line, format!("not a JSON object: {e}")))?;
        self.values.fill(Value::Null);
        for (name, value) in &object {
            let index = field_index(self.schema, self.fields, name).map_err(|r| bad(line, r))?;
            let f = self.fields[index];
            let value = f
                .parse_json(value)
                .map_err(|r| bad(line, format!("{}: {r}", f.name)))?;
            if value.is_null() && f.required {
                return Err(bad(line, format!("{}: is required", f.name)));
            }
            self.values[index] = value;
            self.present[index] = true;
        }
        self.emit(out)
    }

    /// Checks the record and appends it as one COPY row.
    fn emit(&mut self, out: &mut BytesMut) -> Result<(), DataError> {
        let Value::Text(email) = &self.values[0] else {
            return Err(bad(self.line, "email: is required"));
        };
        if !self.needs_dedup {
            // For ASCII, `lower()` never folds two addresses together that ASCII lowercasing keeps apart (in
            // any locale), so a miss here is a guarantee; a hash collision merely costs the sort.
            if email.is_ascii() && self.seen.len() < MAX_TRACKED {
                let key = FOLD.hash_one(email.to_ascii_lowercase());
                self.needs_dedup = !self.seen.insert(key);
            } else {
                self.needs_dedup = true;
            }
        }
        self.records += 1;
        let mut row = Vec::with_capacity(128);
        row.extend_from_slice(self.line.to_string().as_bytes());
        for value in &self.values {
            row.push(b'\t');
            value.write_copy_text(&mut row);
        }
        row.push(b'\n');
        out.extend_from_slice(&row);
        Ok(())
    }
}

/// The position of a writable field among `fields`, or why the name is refused.
fn field_index(schema: &Schema, fields: &[&Field], name: &str) -> Result<usize, String> {
    let field = schema.writable(name)?;
    fields
        .iter()
        .position(|f| f.name == field.name)
        .ok_or_else(|| format!("unknown field {:?}", truncate(name)))
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Maps a CSV header to field indexes: every name a writable field, none twice, `email` present.
fn header(schema: &Schema, fields: &[&Field], cells: &[&str]) -> Result<Vec<usize>, String> {
    let mut mapping = Vec::with_capacity(cells.len());
    for cell in cells {
        let name = cell.trim();
        let index = field_index(schema, fields, name).map_err(|r| format!("{r} in the header"))?;
        if mapping.contains(&index) {
            return Err(format!("field {name:?} appears twice in the header"));
        }
        mapping.push(index);
    }
    if !mapping.contains(&0) {
        return Err("the header has no email column".to_owned());
    }
    Ok(mapping)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(format: Format, chunks: &[&[u8]]) -> Result<(u64, String), DataError> {
        let schema = Schema::standard();
        let fields: Vec<&Field> = schema.writable_fields().collect();
        let mut reader = RecordReader::new(format, &schema, &fields);
        let mut out = BytesMut::new();
        for chunk in chunks {
            reader.feed(chunk, &mut out)?;
        }
        reader.finish(&mut out)?;
        Ok((reader.records, String::from_utf8(out.to_vec()).unwrap()))
    }

    #[test]
    fn csv_records_split_across_chunks_with_quotes_and_crlf_are_read_whole() {
        let csv = Format::Csv { delimiter: b',' };
        let (n, out) = rows(
            csv,
            &[
                b"\xEF\xBB\xBFemail,first_",
                b"name\r\na@b.org,\"An,\"\"na\"\"\"\r\n",
                b"c@d.org,",
            ],
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            out,
            "2\ta@b.org\tAn,\"na\"\t\\N\t\\N\n3\tc@d.org\t\\N\t\\N\t\\N\n"
        );
    }

    #[test]
    fn a_bad_record_names_its_line() {
        let csv = Format::Csv { delimiter: b';' };
        let err = rows(csv, &[b"email;gender\na@b.org;x\n\nnope;y\n"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 4: email: must be an e-mail address like name@example.org"
        );
        let err = rows(Format::Ndjson, &[b"{\"email\":\"a@b.org\"}\n{\"emial\":1}"]).unwrap_err();
        assert_eq!(err.to_string(), "line 2: unknown field \"emial\"");
    }

    #[test]
    fn a_repeated_address_in_any_case_or_a_non_ascii_one_asks_for_deduplication() {
        let schema = Schema::standard();
        let fields: Vec<&Field> = schema.writable_fields().collect();
        let dedup = |body: &[u8]| {
            let mut reader = RecordReader::new(Format::Csv { delimiter: b',' }, &schema, &fields);
            let mut out = BytesMut::new();
            reader.feed(body, &mut out).unwrap();
            reader.finish(&mut out).unwrap();
            reader.needs_dedup
        };
        assert!(!dedup(b"email\na@b.org\nb@b.org\n"));
        assert!(dedup(b"email\na@b.org\nA@B.org\n"));
        assert!(dedup("email\nj\u{fc}rgen@b.org\n".as_bytes()));
    }

    #[test]
    fn ndjson_lines_split_across_chunks_are_joined() {
        let (n, out) = rows(
            Format::Ndjson,
            &[
                b"{\"email\":\"a@b.o",
                b"rg\",\"gender\":null}\n\n{\"email\":\"x@y.org\"}\n",
            ],
        )
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            out,
            "1\ta@b.org\t\\N\t\\N\t\\N\n3\tx@y.org\t\\N\t\\N\t\\N\n"
        );
    }

    #[test]
    fn an_empty_chunk_in_the_middle_of_a_record_does_not_end_it() {
        let csv = Format::Csv { delimiter: b',' };
        let whole = rows(csv, &[b"email,first_name\na@b.org,Anna\n"]).unwrap();
        let chunked = rows(
            csv,
            &[b"email,first_", b"", b"name\na@b.org,An", b"", b"na\n"],
        )
        .unwrap();
        assert_eq!(whole, chunked);
    }

    mod properties {
        //! Any bytes, cut into any chunks, are read or refused naming a line (never a panic), and how the body
        //! arrives in chunks never changes the outcome.
        use proptest::prelude::*;

        use super::*;

        fn outcome(format: Format, body: &[u8], cuts: &[usize]) -> Result<(u64, String), String> {
            let mut chunks = Vec::new();
            let mut start = 0;
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            cuts.sort_unstable();
            for cut in cuts {
                chunks.push(&body[start..cut.max(start)]);
                start = cut.max(start);
            }
            chunks.push(&body[start..]);
            rows(format, &chunks).map_err(|e| match e {
                DataError::Import(ImportError::BadRecord { line, reason }) => {
                    assert!(line >= 1, "line {line}");
                    assert!(
                        line <= newlines(body) + 1,
                        "line {line} of {} lines",
                        newlines(body) + 1
                    );
                    format!("line {line}: {reason}")
                }
                other => panic!("not a refusal naming a line: {other}"),
            })
        }

        fn formats() -> impl Strategy<Value = Format> {
            prop_oneof![
                Just(Format::Ndjson),
                proptest::sample::select(vec![b',', b';', b'\t', b'|'])
                    .prop_map(|delimiter| Format::Csv { delimiter }),
            ]
        }

        /// Bodies near the real shape: a header, then records of addresses, names, quotes and line breaks.
        fn csv_like() -> impl Strategy<Value = Vec<u8>> {
            let cell = prop_oneof![
                Just("email".to_owned()),
                Just("first_name".to_owned()),
                Just("gender".to_owned()),
                Just("a@b.org".to_owned()),
                Just("A@B.ORG".to_owned()),
                "[a-z@.\"\\\\ ]{0,8}",
                "\\PC{0,4}",
            ];
            let sep =
                proptest::sample::select(vec![",", ";", "\n", "\r\n", "\"", "\t", "{", "}", ":"]);
            proptest::collection::vec((cell, sep), 0..24).prop_map(|parts| {
                parts
                    .into_iter()
                    .flat_map(|(c, s)| [c, s.to_owned()])
                    .collect::<String>()
                    .into_bytes()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_bytes_are_read_or_refused_naming_a_line_in_any_chunking(
                format in formats(),
                body in prop_oneof![proptest::collection::vec(any::<u8>(), 0..200), csv_like()],
                cuts in proptest::collection::vec(any::<usize>(), 0..6),
            ) {
                let whole = outcome(format, &body, &[]);
                let chunked = outcome(format, &body, &cuts);
                prop_assert_eq!(whole, chunked);
            }

            /// Values written as COPY text come back as they were: every row has one column per field, and
            /// tabs, backslashes and line breaks inside values are escaped.
            #[test]
            fn valid_records_reach_copy_with_one_column_per_field(
                names in proptest::collection::vec("[^\\p{Cc}]{0,20}", 1..6),
            ) {
                let mut body = String::from("email,first_name\n");
                for (i, name) in names.iter().enumerate() {
                    body.push_str(&format!("u{i}@example.org,\"{}\"\n", name.replace('"', "\"\"")));
                }
                let (records, copy) = rows(Format::Csv { delimiter: b',' }, &[body.as_bytes()])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(records, names.len() as u64);
                let schema = Schema::standard();
                let columns = schema.writable_fields().count();
                let lines: Vec<&str> = copy.strip_suffix('\n').unwrap_or(&copy).split('\n').collect();
                prop_assert_eq!(lines.len(), names.len());
                for (line, name) in lines.iter().zip(&names) {
                    let cells: Vec<&str> = line.split('\t').collect();
                    // The line number, then one column per writable field.
                    prop_assert_eq!(cells.len(), columns + 1);
                    let trimmed = name.trim();
                    let expected = if trimmed.is_empty() { "\\N".to_owned() } else { trimmed.replace('\\', "\\\\") };
                    prop_assert_eq!(cells[2], expected.as_str());
                }
            }
        }
    }
}
