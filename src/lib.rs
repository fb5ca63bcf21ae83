//! polyhost: a hosting supervisor for shared hosting (skeleton; filled in by the first issues).
pub mod cli;
pub mod config;
pub mod docroot;
pub mod upstream;
