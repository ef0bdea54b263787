//! The access service: authentication (a bearer token → a principal, cached until a change is notified) in
//! [`authn`], and every change of rights (users, roles, access, tokens) as one call that checks, writes and
//! invalidates the principal caches (`rights.rs`). The rights model itself is plain logic in
//! [`crate::domain::rights`]; its SQL is in `control/access.rs`.
//! Never: HTTP types, or SQL of its own.

pub mod authn;
