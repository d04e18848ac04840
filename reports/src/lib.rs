//! What a parity run found, and the reports rendered from it.
//!
//! [`results`] is the data model comparison produces and every report reads.

pub mod results;
