//! The `parity` subcommands: each module parses its options and prints its output; the work is
//! done by the library (`harness::*`), the engine and the reports crate.

pub mod bench;
pub mod bisect;
pub mod calibrate;
pub mod diff;
pub mod generate;
pub mod inspect;
pub mod merge;
pub mod plant;
pub mod run;
pub mod select;
pub mod threads;
