//! tally's document core: the four document kinds (campaign, collection, review, totals) with a
//! typed API over automerge 0.12, the validation the server runs on every incoming change before
//! it merges it, the reference `totals` function, and the device-side sealing of signers'
//! personal fields and their duplicate tokens.
//!
//! Everything here is pure: no IO, no async, no clock. Time is passed in as milliseconds since the
//! Unix epoch, randomness comes from the caller's documents (automerge actor ids) or from `age`.
//!
//! How the pieces fit: a phone builds a [`collection::Signature`] from a form
//! ([`collection::SignatureForm::prepare`]), which seals the personal fields ([`seal`]) and computes
//! the duplicate token; it writes the record into its own collection document. The server runs
//! [`validate::validate`] on the document before and after the incoming changes, merges only what
//! passes, and keeps totals equal to [`totals::totals`].

pub mod campaign;
pub mod cells;
pub mod city;
pub mod collection;
pub mod doc;
pub mod fields;
#[cfg(any(test, feature = "testkit"))]
pub mod fixtures;
pub mod form;
pub mod review;
pub mod seal;
pub mod totals;
pub mod totals_doc;
pub mod validate;
mod writes;

pub use doc::{DocHeader, DocKind, SCHEMA_VERSION};
pub use validate::{Rejection, Role, Rule, Writer, validate};
