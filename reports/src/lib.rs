//! What a parity run found, and the reports rendered from it.
//!
//! [`results`] is the data model comparison produces and every report reads; [`summary`] regroups
//! it into the checkpoint x reference grid and the verdict; [`confidence`] grades the run by a
//! documented rule; [`replay`] holds what `parity replay` found, [`sweep`] what `parity sweep` found; [`vocab`] names every closed set
//! once; [`markdown`], [`html`], [`junit`] and [`json`] render it; [`bundle`] writes a proof
//! bundle, whose input hashes [`hashes`] remembers between runs, signed by [`signing`] when a key
//! is given.

pub mod bundle;
pub mod confidence;
pub(crate) mod files;
pub mod hashes;
pub mod html;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod replay;
pub mod results;
pub mod signing;
pub mod summary;
pub mod sweep;
pub mod vocab;

#[cfg(test)]
pub(crate) mod fixture;
